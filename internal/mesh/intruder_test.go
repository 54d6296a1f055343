package mesh

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/dns"
	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/testkit"
)

// startIntruder runs this package's own code as an intruder: prepare may
// change the Mesh (its link certificate) between New and Start.
func (c *cluster) startIntruder(opts Options, prepare func(*Mesh)) *testNode {
	c.t.Helper()
	logger, logs := testkit.Logger(c.t)
	m, err := New(opts, logger, prometheus.NewRegistry())
	if err != nil {
		c.t.Fatal(err)
	}
	if prepare != nil {
		prepare(m)
	}
	if err := m.Start(context.Background()); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.Leave(ctx)
	})
	return &testNode{Mesh: m, opts: opts, logs: logs}
}

// startDNS serves the dynamic name widget.edgenode.test. from src's map,
// every serving node in each answer.
func startDNS(t *testing.T, src nodemap.Source) string {
	t.Helper()
	s, err := dns.New(dns.Options{
		Listen:     "127.0.0.1:0",
		UDPSockets: 1,
		Zones:      []dns.Zone{{Origin: "edgenode.test."}},
		Dynamic:    []dns.DynamicName{{Name: "widget", K: 16}},
	}, src, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	udp, _ := s.Addr()
	return udp.String()
}

// widget asks the DNS server at addr for widget.edgenode.test. A over UDP.
func widget(t *testing.T, addr string) []netip.Addr {
	t.Helper()
	q := new(mdns.Msg)
	q.SetQuestion("widget.edgenode.test.", mdns.TypeA)
	r, _, err := (&mdns.Client{Timeout: 5 * time.Second}).Exchange(q, addr)
	if err != nil {
		t.Fatalf("dns query: %v", err)
	}
	var out []netip.Addr
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			ip, _ := netip.AddrFromSlice(a.A)
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// TestIntrudersNeverInDNS plays intruders that hold the gossip key, join
// the membership and advertise an address for the dynamic DNS name, but
// cannot prove the address is theirs:
//
//   - mallory has no certificate from the fleet CA (one from its own CA);
//   - trudy presents a fleet certificate for another node id;
//   - eve has a fleet certificate for itself, but advertises an address
//     its certificate does not name.
//
// Real DNS queries to an honest node must never return their addresses,
// while the honest peer is answered.
func TestIntrudersNeverInDNS(t *testing.T) {
	c := newCluster(t)
	honest := c.startN("a", "b")
	a, b := honest[0], honest[1]
	waitMap(t, a, settle, "a and b alive", allState([]string{"a", "b"}, nodemap.Alive))
	dnsAddr := startDNS(t, a)

	other := newCluster(t)
	mOpts := other.options("mallory")
	mOpts.GossipKeys = [][]byte{testKey}
	mOpts.Seeds = []string{a.opts.BindAddr}
	mallory := c.startIntruder(mOpts, nil)

	tOpts := c.options("trudy")
	tOpts.Seeds = []string{a.opts.BindAddr}
	certPEM, keyPEM, err := pki.IssueNodePEM(c.caDir, "victor", []string{tOpts.PublicIPv4.String()})
	if err != nil {
		t.Fatal(err)
	}
	victor, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	trudy := c.startIntruder(tOpts, func(m *Mesh) { m.links.cert = victor })

	eOpts := c.options("eve")
	eOpts.Seeds = []string{a.opts.BindAddr}
	eOpts.PublicIPv4 = netip.MustParseAddr("127.0.66.66")
	eve := c.startIntruder(eOpts, nil)

	intruders := map[netip.Addr]string{
		mallory.opts.PublicIPv4: "mallory", trudy.opts.PublicIPv4: "trudy", eve.opts.PublicIPv4: "eve",
	}
	all := []string{"a", "b", "eve", "mallory", "trudy"}
	waitMap(t, a, settle, "the intruders in a's membership", allState(all, nodemap.Alive))
	// Positive signals that a tried their links: it refused mallory's and
	// trudy's certificates, and eve's link (valid certificate) is up.
	testkit.WaitFor(t, settle, "a refuses mallory's certificate", func() bool {
		return testutil.ToFloat64(a.met.refused.WithLabelValues("bad_certificate")) > 0
	})
	testkit.WaitFor(t, settle, "a refuses trudy's node id", func() bool {
		return testutil.ToFloat64(a.met.refused.WithLabelValues("wrong_id")) > 0
	})
	testkit.WaitFor(t, settle, "links a-b and a-eve up", func() bool {
		return peerMetric(a, descLinkUp, "eve") == 1 && peerMetric(a, descLinkUp, "b") == 1
	})
	testkit.WaitFor(t, settle, "a's DNS names b", func() bool {
		return slices.Contains(widget(t, dnsAddr), b.opts.PublicIPv4)
	})
	seen := map[string]bool{}
	for i := range 20 {
		got := widget(t, dnsAddr)
		for _, ip := range got {
			if who, ok := intruders[ip]; ok && !seen[who] {
				seen[who] = true
				t.Errorf("query %d: DNS answered with %s's address %v (answer %v)", i, who, ip, got)
			}
		}
		if !slices.Contains(got, a.opts.PublicIPv4) || !slices.Contains(got, b.opts.PublicIPv4) {
			t.Fatalf("query %d: honest nodes missing from %v", i, got)
		}
	}

	// a's map says who is verified, and why the others are not.
	reasons := map[string]string{
		"mallory": "bad_certificate",
		"trudy":   "certificate names victor",
		"eve":     "public address 127.0.66.66 is not among its certificate's IP addresses",
	}
	var wrong []string
	waitMap(t, a, settle, "a's map to show who is verified", func(mp *nodemap.Map) bool {
		wrong = wrong[:0]
		for _, id := range []string{"a", "b"} {
			if n, _ := mp.Node(id); !n.Verified || !n.Serving() {
				wrong = append(wrong, fmt.Sprintf("honest %s not verified: %q", id, n.Unverified))
			}
		}
		for id, want := range reasons {
			if n, _ := mp.Node(id); n.Verified || n.Serving() || !strings.Contains(n.Unverified, want) {
				wrong = append(wrong, fmt.Sprintf("%s: verified %v, reason %q; want unverified for %q", id, n.Verified, n.Unverified, want))
			}
		}
		if len(wrong) > 0 {
			t.Logf("not yet: %v", wrong)
		}
		return len(wrong) == 0
	})
	// Run by an honest operator, eve's configuration would have been
	// flagged at start.
	if !eve.logs.Contains("does not name its public address") {
		t.Errorf("no warning about eve's own certificate:\n%s", eve.logs.String())
	}
}
