package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/edgenode/edgenode/internal/cdn"
	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/testkit"
)

// TestPeerFillCluster: three real nodes in one region share one S3 origin
// (versitygw). With cold caches, the same keys requested on every node cost
// the origin one GET per key for the whole fleet: the key's owner fills
// from S3, the others from it over the peer listener (mutual TLS with the
// mesh's node certificates). With the owner killed, the others fall back
// to the origin (counted). The peer listener refuses a client without a
// certificate, with one from another CA, and with a fleet certificate of a
// node that is not in the node map.
func TestPeerFillCluster(t *testing.T) {
	endpoint, bucket := startS3(t)
	body := func(key string) string { return strings.Repeat("media "+key+" ", 200) }
	var keys, later []string
	for i := range 12 {
		keys = append(keys, fmt.Sprintf("pics/%d.jpg", i))
		later = append(later, fmt.Sprintf("late/%d.jpg", i))
	}
	putObjects(t, endpoint, bucket, body, append(append([]string{}, keys...), later...)...)
	c, port := peerFillCluster(t, 3, endpoint, bucket, "")

	hc := httpsClient(true)
	fetch := func(i int, key string) {
		t.Helper()
		resp, got := get(t, hc, "https://"+c.nodes[i].https+"/media/"+key)
		if resp.StatusCode != 200 || got != body(key) {
			t.Fatalf("node%d %s: %d, %d bytes", i+1, key, resp.StatusCode, len(got))
		}
	}
	originGETs := func(nodes ...int) float64 {
		sum := 0.0
		for _, i := range nodes {
			sum += metricSum(t, c.nodes[i].admin, "edgenode_cdn_origin_requests_total")
		}
		return sum
	}
	for i := range 3 {
		for _, k := range keys {
			fetch(i, k)
		}
	}
	if got := originGETs(0, 1, 2); got != float64(len(keys)) {
		t.Errorf("origin GETs for %d keys on 3 nodes: %v, want one per key", len(keys), got)
	}
	peerOK := 0.0
	for i := range 3 {
		peerOK += metricSum(t, c.nodes[i].admin, "edgenode_cdn_peer_fills_total", "result", "ok")
	}
	if peerOK != float64(2*len(keys)) {
		t.Errorf("peer fills ok: %v, want %d (each key from its owner on the two other nodes)", peerOK, 2*len(keys))
	}

	t.Logf("fleet-wide origin GETs %v for %d keys on 3 nodes; peer fills ok %v", originGETs(0, 1, 2), len(keys), peerOK)
	refusals(t, c, port)

	// node3 dies: the keys it owns fill from the origin on the others.
	nodes := []cdn.PeerNode{{ID: "node1", Region: "eu"}, {ID: "node2", Region: "eu"}, {ID: "node3", Region: "eu"}}
	var owned []string
	for _, k := range later {
		if o, _ := cdn.Owner(k, "eu", nodes); o.ID == "node3" {
			owned = append(owned, k)
		}
	}
	if len(owned) == 0 {
		t.Fatalf("node3 owns none of %v", later)
	}
	c.nodes[2].cmd.Process.Signal(syscall.SIGKILL)
	c.nodes[2].wait(10 * time.Second)
	before := originGETs(0)
	for _, k := range owned {
		fetch(0, k)
	}
	if got := originGETs(0) - before; got != float64(len(owned)) {
		t.Errorf("node1 origin GETs for %d keys of the dead owner: %v, want one each", len(owned), got)
	}
	fallbacks := metricSum(t, c.nodes[0].admin, "edgenode_cdn_peer_fills_total", "result", "unreachable") +
		metricSum(t, c.nodes[0].admin, "edgenode_cdn_peer_fills_total", "result", "slow")
	t.Logf("dead owner: %d keys on node1, %v origin GETs, %v fallbacks counted", len(owned), originGETs(0)-before, fallbacks)
	if fallbacks == 0 {
		t.Errorf("no fallback from the dead owner counted on node1")
	}
}

// refusals checks who the peer listener of node1 admits.
func refusals(t *testing.T, c *cluster, port int) {
	t.Helper()
	caCert := between(c.cfgs[0], "ca_cert: ", "\n")
	caDir := filepath.Dir(caCert)
	roots, err := pki.LoadCAPool(caCert)
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://127.0.0.1:%d/v1/cdn/peer/pics/0.jpg", port)
	try := func(cert *tls.Certificate) error {
		cfg := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		cl := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
		resp, err := cl.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	issue := func(caDir, id string) *tls.Certificate {
		certPEM, keyPEM, err := pki.IssueNodePEM(caDir, id, []string{"127.0.0.9"})
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &cert
	}
	// A fleet certificate naming a node of the map reads cached media:
	// the control that the refusals below are the listener's choice.
	if err := try(issue(caDir, "node2")); err != nil {
		t.Fatalf("a fleet node's certificate: %v", err)
	}
	if err := try(nil); err == nil {
		t.Error("a client without a certificate was served")
	}
	other := filepath.Join(t.TempDir(), "other-ca")
	if err := pki.InitCA(other); err != nil {
		t.Fatal(err)
	}
	if err := try(issue(other, "node2")); err == nil {
		t.Error("a certificate from another CA was served")
	}
	if err := try(issue(caDir, "intruder")); err == nil {
		t.Error("a fleet certificate of a node not in the node map was served")
	}
}

// between is the text of s after the first before and up to after.
func between(s, before, after string) string {
	_, rest, ok := strings.Cut(s, before)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, after)
	return strings.Trim(strings.TrimSpace(v), `"`)
}

// sharedFreePort is a TCP port free on every one of ips: the peer
// listener's port is the same on every clone.
func sharedFreePort(t *testing.T, ips ...string) int {
	t.Helper()
	for range 50 {
		p := testkit.FreePort(t, ips[0])
		ok := true
		for _, ip := range ips[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(p)))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no port free on all of", ips)
	return 0
}

// TestPeerFillOff: with cdn.peer_fill.enabled: false, on nodes where peer
// fill would otherwise run (mesh on, verified members, an S3 origin, a peer
// listen address set), there is no peer listener and every node fills from
// the origin itself: one origin GET per key on each node, no peer fill of
// any result counted.
func TestPeerFillOff(t *testing.T) {
	endpoint, bucket := startS3(t)
	body := func(key string) string { return strings.Repeat("off "+key+" ", 200) }
	var keys []string
	for i := range 8 {
		keys = append(keys, fmt.Sprintf("off/%d.jpg", i))
	}
	putObjects(t, endpoint, bucket, body, keys...)
	// As in TestPeerFillCluster: with peer fill on, these members would
	// be asked.
	c, port := peerFillCluster(t, 2, endpoint, bucket, "peer_fill: {enabled: false}")
	for i := range 2 {
		addr := fmt.Sprintf("127.0.0.%d:%d", i+1, port)
		if conn, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			conn.Close()
			t.Errorf("node%d listens on its peer fill address %s with peer fill off", i+1, addr)
		}
	}
	hc := httpsClient(true)
	for i := range 2 {
		for _, k := range keys {
			resp, got := get(t, hc, "https://"+c.nodes[i].https+"/media/"+k)
			if resp.StatusCode != 200 || got != body(k) {
				t.Fatalf("node%d %s: %d, %d bytes", i+1, k, resp.StatusCode, len(got))
			}
		}
	}
	for i := range 2 {
		if got := metricSum(t, c.nodes[i].admin, "edgenode_cdn_origin_requests_total"); got != float64(len(keys)) {
			t.Errorf("node%d: %v origin GETs for %d keys, want one per key (each node fills itself)", i+1, got, len(keys))
		}
		if got := metricSum(t, c.nodes[i].admin, "edgenode_cdn_peer_fills_total"); got != 0 {
			t.Errorf("node%d: %v peer fills counted with peer fill off", i+1, got)
		}
	}
}

// putObjects stores body(key) under each key in the versitygw bucket.
func putObjects(t *testing.T, endpoint, bucket string, body func(string) string, keys ...string) {
	t.Helper()
	s3c := s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(bkAccess, bkSecret, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	for _, k := range keys {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(k), Body: strings.NewReader(body(k))})
		cancel()
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
}

// peerFillCluster starts n nodes (127.0.0.1..n, mesh on, Mongo off) on the
// S3 origin, each with its peer fill listener on one shared port and
// cdnExtra (a YAML fragment inside cdn:) in its config, and waits until
// every node sees every member alive and verified: the members peer fill
// would ask.
func peerFillCluster(t *testing.T, n int, endpoint, bucket, cdnExtra string) (*cluster, int) {
	t.Helper()
	var addrs, ids []string
	for i := range n {
		addrs = append(addrs, fmt.Sprintf("127.0.0.%d", i+1))
		ids = append(ids, fmt.Sprintf("node%d", i+1))
	}
	port := sharedFreePort(t, addrs...)
	if cdnExtra != "" {
		cdnExtra = "  " + cdnExtra + "\n"
	}
	c := newCluster(t, n, fmt.Sprintf(`node: {region: eu}
mongo: {enabled: false}
log: {level: info}
cdn:
%s  origin:
    s3: {bucket: %s, endpoint: %q, path_style: true, region: us-east-1, access_key_id: %s, secret_access_key: %s}
`, cdnExtra, bucket, endpoint, bkAccess, bkSecret))
	for i := range c.cfgs {
		c.cfgs[i] = mergeYAML(t, c.cfgs[i], fmt.Sprintf("cdn: {peer_fill: {listen: \"127.0.0.%d:%d\"}}\n", i+1, port))
	}
	c.startAll()
	for i := range n {
		testkit.WaitFor(t, 60*time.Second, fmt.Sprintf("node%d to see %d alive, verified members", i+1, n), func() bool {
			ms := c.members(i)
			for _, id := range ids {
				if m := ms[id]; m.State != "alive" || !m.Verified {
					return false
				}
			}
			return true
		})
	}
	return c, port
}
