package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/testkit"
)

const (
	bkAccess = "backuptestaccess"
	bkSecret = "backuptestsecret0123456789"
)

// startS3 starts a versitygw (a real S3 server, posix backend) for t and
// returns its endpoint URL and a client with a new bucket.
func startS3(t *testing.T) (endpoint, bucket string) {
	t.Helper()
	bin, err := testkit.Tool("versitygw", nil)
	if err != nil {
		t.Fatalf("versitygw: %v", err)
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	port, err := testkit.PickPort("127.0.0.1", false)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := []string{"--port", addr, "--access", bkAccess, "--secret", bkSecret, "--quiet", "posix"}
	// versitygw keeps object metadata in xattrs, or in a sidecar folder
	// where the filesystem has none.
	probe := filepath.Join(root, ".probe")
	_ = os.WriteFile(probe, nil, 0o644)
	if syscall.Setxattr(probe, "user.edgenode.probe", []byte("1"), 0) != nil {
		side := filepath.Join(dir, "sidecar")
		_ = os.MkdirAll(side, 0o755)
		args = append(args, "--sidecar", side)
	}
	_ = os.Remove(probe)
	cmd := exec.Command(bin, append(args, root)...)
	logs := &testkit.LogBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	endpoint = "http://" + addr
	client := s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(bkAccess, bkSecret, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	bucket = "edgenode-backups"
	testkit.WaitFor(t, 30*time.Second, "versitygw to make a bucket", func() bool {
		select {
		case <-exited:
			t.Fatalf("versitygw exited:\n%s", logs.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
		return err == nil
	})
	return endpoint, bucket
}

// edgenodeCmd runs the binary with args (and env added) and returns its
// exit code and output.
func edgenodeCmd(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("edgenode %v did not finish:\n%s", args, out.String())
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

func writeTestFile(t *testing.T, dir, name, s string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func countDocs(t *testing.T, cl *mongo.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	n, err := cl.Database(replDB).Collection(docColl).CountDocuments(ctx, bson.D{})
	if err != nil {
		return -1
	}
	return n
}

// TestBackupRestoreRejoinsWithDelta: a 2-node cluster with data; node2 is
// backed up live to a folder and to S3 (versitygw), more is written on
// both nodes, node2 is stopped and wiped; damaged copies of the backup are
// refused without touching the folder; the S3 backup is restored and node2
// rejoins with a delta (no initial sync; only the ops written since are
// streamed) and converges with node1.
func TestBackupRestoreRejoinsWithDelta(t *testing.T) {
	c := replCluster(t, 2)
	cs := startReplCluster(t, c, 2)
	ctx := context.Background()
	n1, n2 := cs.get()[0], cs.get()[1]
	docs := n1.Database(replDB).Collection(docColl)
	const base = 1000
	for b := 0; b < base/100; b++ {
		batch := make([]any, 100)
		for i := range batch {
			batch[i] = bson.D{{Key: "_id", Value: fmt.Sprintf("d%04d", b*100+i)}, {Key: "n", Value: b*100 + i}, {Key: "pad", Value: strings.Repeat("x", 200)}}
		}
		if _, err := docs.InsertMany(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := docs.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "n", Value: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := docs.DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: bson.A{"d0000", "d0001", "d0002"}}}}}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 60*time.Second, "node2 to hold node1's documents", func() bool { return countDocs(t, n2) == base-3 })

	// The stream is the whole database: never without the admin token.
	resp, err := http.Get("http://" + c.nodes[1].admin + "/v1/mongo/backup")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("backup route without the token: %s", resp.Status)
	}

	// Backups of the live node2, to a folder and to S3.
	tmp := t.TempDir()
	cfg2 := writeTestFile(t, tmp, "node2.yaml", c.cfgs[1])
	folder := filepath.Join(tmp, "backups")
	code, out := edgenodeCmd(t, nil, "backup", "--config", cfg2, "--to", folder)
	if code != 0 || backedUpDocs(out) < base-3 {
		t.Fatalf("backup to a folder: exit %d:\n%s", code, out)
	}
	t.Logf("backup to a folder:\n%s", out)
	endpoint, bucket := startS3(t)
	s3env := []string{"AWS_ACCESS_KEY_ID=" + bkAccess, "AWS_SECRET_ACCESS_KEY=" + bkSecret}
	s3loc := "s3://" + bucket + "/fleet/node2"
	code, out = edgenodeCmd(t, s3env, "backup", "--config", cfg2, "--to", s3loc, "--s3-endpoint", endpoint)
	if code != 0 || backedUpDocs(out) < base-3 {
		t.Fatalf("backup to S3: exit %d:\n%s", code, out)
	}

	// Written after the backup: on node1, and on node2 (its old
	// incarnation's ops reach node1, which relays them back after the
	// restore).
	const delta1, delta2 = 30, 20
	for i := range delta1 {
		if _, err := docs.InsertOne(ctx, bson.D{{Key: "_id", Value: fmt.Sprintf("late1-%d", i)}, {Key: "n", Value: -i}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := docs.UpdateOne(ctx, bson.D{{Key: "_id", Value: "d0500"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "changed", Value: true}}}}); err != nil {
		t.Fatal(err)
	}
	for i := range delta2 {
		if _, err := n2.Database(replDB).Collection(docColl).InsertOne(ctx, bson.D{{Key: "_id", Value: fmt.Sprintf("late2-%d", i)}, {Key: "n", Value: -100 - i}}); err != nil {
			t.Fatal(err)
		}
	}
	waitOwnOpsAcked(t, c, 1, 1, 30*time.Second)
	cs.set(1, nil)
	c.nodes[1].signal(syscall.SIGTERM)
	if code := c.nodes[1].wait(30 * time.Second); code != 0 {
		t.Fatalf("node2 exited %d", code)
	}
	dataDir := c.nodes[1].dataDir
	if err := os.RemoveAll(dataDir); err != nil {
		t.Fatal(err)
	}

	// Damaged backups are refused before anything is written.
	id := onlyBackup(t, folder)
	part := filepath.Join(id, "part-000001.gz")
	for _, damage := range []struct {
		name string
		fn   func(dir string)
		want string
	}{
		{"bit flipped", func(dir string) {
			p := filepath.Join(dir, part)
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0x40
			_ = os.WriteFile(p, b, 0o600)
		}, "checksum mismatch"},
		{"truncated", func(dir string) {
			p := filepath.Join(dir, part)
			st, _ := os.Stat(p)
			_ = os.Truncate(p, st.Size()/2)
		}, "truncated"},
		{"manifest edited", func(dir string) {
			p := filepath.Join(dir, id, "manifest.json")
			b, _ := os.ReadFile(p)
			_ = os.WriteFile(p, bytes.Replace(b, []byte(`"documents": `), []byte(`"documents": 1`), 1), 0o600)
		}, "manifest checksum mismatch"},
	} {
		dir := filepath.Join(tmp, "damaged-"+strings.ReplaceAll(damage.name, " ", "-"))
		if err := os.CopyFS(dir, os.DirFS(folder)); err != nil {
			t.Fatal(err)
		}
		damage.fn(dir)
		code, out := edgenodeCmd(t, nil, "restore", "--config", cfg2, "--from", dir)
		if code == 0 || !strings.Contains(out, damage.want) || !strings.Contains(out, "nothing was restored") {
			t.Errorf("restore of a backup with its %s: exit %d, want a refusal naming %q:\n%s", damage.name, code, damage.want, out)
		}
		if _, err := os.Stat(dataDir); err == nil {
			t.Fatalf("a refused restore (%s) created the data folder", damage.name)
		}
	}
	// A backup older than the peers' log retention is refused (the
	// backup is seconds old here; this config keeps ops for 1 ms).
	shortCfg := writeTestFile(t, tmp, "short.yaml", mergeYAML(t, c.cfgs[1], "mongo: {log_retention: 1ms}\n"))
	if code, out := edgenodeCmd(t, nil, "restore", "--config", shortCfg, "--from", folder); code == 0 || !strings.Contains(out, "older than mongo.log_retention") {
		t.Errorf("restore of a backup older than log_retention: exit %d, want a refusal:\n%s", code, out)
	}
	if _, err := os.Stat(dataDir); err == nil {
		t.Fatal("a refused restore (too old) created the data folder")
	}
	if code, out := edgenodeCmd(t, nil, "restore", "--config", cfg2, "--from", folder, "--check"); code != 0 {
		t.Errorf("restore --check of the sound backup: exit %d:\n%s", code, out)
	}

	// Restore from S3 (the newest backup under the prefix).
	code, out = edgenodeCmd(t, s3env, "restore", "--config", cfg2, "--from", s3loc, "--s3-endpoint", endpoint)
	if code != 0 {
		t.Fatalf("restore from S3: exit %d:\n%s", code, out)
	}
	t.Logf("restore from S3:\n%s", out)
	if code, out := edgenodeCmd(t, nil, "restore", "--config", cfg2, "--from", folder); code == 0 || !strings.Contains(out, "belongs to a node that has run") {
		t.Errorf("a second restore over the restored folder: exit %d, want a refusal:\n%s", code, out)
	}

	c.start(1)
	waitWritable(t, c, 60*time.Second, 1)
	cs.set(1, mongoClient(t, c.nodes[1]))
	checkConverged(t, cs.get(), names(2), &ledger{}, 60*time.Second)
	if got := countDocs(t, cs.get()[1]); got != base-3+delta1+delta2 {
		t.Errorf("node2 holds %d documents, want %d", got, base-3+delta1+delta2)
	}
	adm := c.nodes[1].admin
	syncItems := metricSum(t, adm, "edgenode_mongo_repl_initial_sync_items_total")
	applied := metricSum(t, adm, "edgenode_mongo_repl_ops_applied_total")
	if syncItems != 0 || strings.Contains(c.nodes[1].out.String(), "initial sync starting") {
		t.Errorf("the restored node made an initial sync (%v items)", syncItems)
	}
	// The delta: 30 inserts and an update on node1, 20 inserts of node2's
	// previous incarnation; a full initial sync carries every document
	// (997 here) plus the schema, tombstones and DDL records.
	if want := float64(delta1 + 1 + delta2); applied < want || applied > want+10 {
		t.Errorf("the restored node applied %v peer ops, want the delta, %v", applied, want)
	}
	t.Logf("restored node2 rejoined with %v ops streamed and 0 initial-sync items (a full initial sync: more than %d items)", applied, base-3)
}

// backedUpDocs reads the document count from backup's output (the app's
// documents, and any the node wrote in its own replicated collections).
func backedUpDocs(out string) int {
	m := regexp.MustCompile(`(?m)^  (\d+) documents,`).FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// onlyBackup returns the id of the one backup in folder.
func onlyBackup(t *testing.T, folder string) string {
	t.Helper()
	ents, err := os.ReadDir(folder)
	if err != nil || len(ents) != 1 {
		t.Fatalf("backup folder %s: %v, %d entries", folder, err, len(ents))
	}
	return ents[0].Name()
}
