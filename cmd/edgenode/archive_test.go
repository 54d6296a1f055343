package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/testkit"
)

// TestArchivePointInTimeRestore: a node streams its ops to S3
// (versitygw) with mongo.archive; a document is deleted by mistake; a
// restore to just before the delete has it back and nothing written
// after that time, as JSON dumps and as a seeded data folder a node
// serves; a restore --to-op the delete itself (in the middle of its
// segment) has the delete and nothing after it; a segment cut short or
// with a byte changed is named and nothing is restored; so is a missing
// segment, by the ops it held.
func TestArchivePointInTimeRestore(t *testing.T) {
	endpoint, bucket := startS3(t)
	archiveCfg := fmt.Sprintf(`mongo:
  archive:
    target: s3://%s/pitr
    s3: {endpoint: %q, path_style: true, access_key_id: %s, secret_access_key: %s}
    segment_interval: 200ms
    base_interval: 1h
cdn: {enabled: false}
`, bucket, endpoint, bkAccess, bkSecret)
	cfg, p := nodeConfig(t, archiveCfg)
	startNode(t, cfg, p)
	cfgFile := writeTestFile(t, t.TempDir(), "node.yaml", cfg)
	// The first base snapshot is written at start (there is none yet).
	testkit.WaitFor(t, 60*time.Second, "the first base snapshot", func() bool {
		return metricSum(t, p.admin, "edgenode_mongo_archive_bases_total") >= 1
	})

	ctx := context.Background()
	cl, err := mongo.Connect(options.Client().ApplyURI("mongodb://" + p.mongo + "/").SetTimeout(20 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Disconnect(ctx)
	docs := cl.Database("app").Collection("docs")
	var batch []any
	for i := range 20 {
		batch = append(batch, bson.D{{Key: "_id", Value: fmt.Sprintf("d%02d", i)}, {Key: "n", Value: i}})
	}
	if _, err := docs.InsertMany(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if _, err := docs.UpdateOne(ctx, bson.D{{Key: "_id", Value: "d05"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: "before"}}}}); err != nil {
		t.Fatal(err)
	}
	// Ops 1-21 in the first segment, the later ones in a second.
	testkit.WaitFor(t, 60*time.Second, "the first 21 ops archived", func() bool {
		return metricSum(t, p.admin, "edgenode_mongo_archive_ops_total") >= 21
	})
	// The restore point: clocks are in milliseconds, so it is a few of
	// them after the last good write and before the mistake.
	time.Sleep(20 * time.Millisecond)
	at := time.Now()
	time.Sleep(20 * time.Millisecond)
	if _, err := docs.DeleteOne(ctx, bson.D{{Key: "_id", Value: "d03"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := docs.InsertOne(ctx, bson.D{{Key: "_id", Value: "late"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := docs.UpdateOne(ctx, bson.D{{Key: "_id", Value: "d05"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: "after"}}}}); err != nil {
		t.Fatal(err)
	}
	const ops = 20 + 1 + 3
	testkit.WaitFor(t, 60*time.Second, "every op archived", func() bool {
		return metricSum(t, p.admin, "edgenode_mongo_archive_ops_total") >= ops
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("node exited %d", code)
	}

	// Restore to just before the delete, as JSON dumps.
	dump := filepath.Join(t.TempDir(), "dump")
	toTime := at.UTC().Format(time.RFC3339Nano)
	code, out := edgenodeCmd(t, nil, "restore", "--config", cfgFile, "--to-time", toTime, "--dump", dump)
	if code != 0 {
		t.Fatalf("restore --to-time --dump: exit %d:\n%s", code, out)
	}
	t.Logf("restore --to-time %s --dump:\n%s", toTime, out)
	b, err := os.ReadFile(filepath.Join(dump, "app.docs.json"))
	if err != nil {
		t.Fatal(err)
	}
	dumped := string(b)
	if n := strings.Count(dumped, "\n"); n != 20 {
		t.Errorf("the dump holds %d documents, want 20:\n%s", n, dumped)
	}
	for _, want := range []string{`{"_id":"d03","n":{"$numberInt":"3"}}`, `"v":"before"`} {
		if !strings.Contains(dumped, want) {
			t.Errorf("the dump lacks %s:\n%s", want, dumped)
		}
	}
	for _, after := range []string{`"late"`, `"after"`, "_edgenode"} {
		if strings.Contains(dumped, after) {
			t.Errorf("the dump holds %s, written after the restore point:\n%s", after, dumped)
		}
	}
	// Each origin's ops applied are printed; the node's origin is the
	// one of its ops 1-24: 20 inserts, the update (21), the delete (22),
	// an insert and an update.
	m := regexp.MustCompile(`origin (\S+): 21 op\(s\) applied above the base's position 0\n`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("restore --to-time: no line of the origin's 21 ops applied:\n%s", out)
	}
	origin := m[1]

	// Up to and including the delete (op 22, first of its segment's
	// three): d03 is gone, the later insert and update are not there.
	toOp := fmt.Sprintf("%s:22", origin)
	dumpOp := filepath.Join(t.TempDir(), "dump")
	code, out = edgenodeCmd(t, nil, "restore", "--config", cfgFile, "--to-op", toOp, "--dump", dumpOp)
	if code != 0 || !strings.Contains(out, "origin "+origin+": 22 op(s) applied") || !strings.Contains(out, "restore done in") {
		t.Fatalf("restore --to-op %s --dump: exit %d, want 22 op(s) applied:\n%s", toOp, code, out)
	}
	t.Logf("restore --to-op %s --dump:\n%s", toOp, out)
	if b, err = os.ReadFile(filepath.Join(dumpOp, "app.docs.json")); err != nil {
		t.Fatal(err)
	}
	dumped = string(b)
	if n := strings.Count(dumped, "\n"); n != 19 || strings.Contains(dumped, `"d03"`) || !strings.Contains(dumped, `"v":"before"`) {
		t.Errorf("restore --to-op the delete: %d documents, want 19 without d03 and with d05 before its last update:\n%s", n, dumped)
	}
	for _, after := range []string{`"late"`, `"after"`} {
		if strings.Contains(dumped, after) {
			t.Errorf("restore --to-op the delete holds %s, written after it:\n%s", after, dumped)
		}
	}

	// The same point as a data folder a new node serves (standalone:
	// nothing brings it forward).
	cfg2, p2 := nodeConfig(t, archiveCfg)
	cfg2 = mergeYAML(t, cfg2, "mongo: {archive: {target: \"\"}}\n")
	cfg2File := writeTestFile(t, t.TempDir(), "restored.yaml", cfg2)
	s3env := []string{"AWS_ACCESS_KEY_ID=" + bkAccess, "AWS_SECRET_ACCESS_KEY=" + bkSecret}
	if code, out := edgenodeCmd(t, s3env, "restore", "--config", cfg2File, "--from", "s3://"+bucket+"/pitr", "--s3-endpoint", endpoint,
		"--to-time", toTime); code != 0 {
		t.Fatalf("restore --to-time into a data folder: exit %d:\n%s", code, out)
	}
	startNode(t, cfg2, p2)
	cl2, err := mongo.Connect(options.Client().ApplyURI("mongodb://" + p2.mongo + "/").SetTimeout(20 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl2.Disconnect(ctx)
	d2 := cl2.Database("app").Collection("docs")
	if n, err := d2.CountDocuments(ctx, bson.D{}); err != nil || n != 20 {
		t.Errorf("the restored node holds %d documents (%v), want 20", n, err)
	}
	var got bson.M
	if err := d2.FindOne(ctx, bson.D{{Key: "_id", Value: "d03"}}).Decode(&got); err != nil {
		t.Errorf("the document deleted by mistake is not back: %v", err)
	}
	if err := d2.FindOne(ctx, bson.D{{Key: "_id", Value: "d05"}}).Decode(&got); err != nil || got["v"] != "before" {
		t.Errorf("d05 on the restored node: %v %v, want v: before", got, err)
	}

	// Damaged segments: the one holding the delete, cut short, then with
	// a byte changed. Each is named, and nothing is restored.
	s3c := s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(bkAccess, bkSecret, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	list, err := s3c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String("pitr/ops/")})
	if err != nil || len(list.Contents) != 2 {
		t.Fatalf("listing the segments: %v, want two (ops 1-21 and 22-24)", err)
	}
	last := aws.ToString(list.Contents[len(list.Contents)-1].Key)
	obj, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(last)})
	if err != nil {
		t.Fatal(err)
	}
	whole, _ := io.ReadAll(obj.Body)
	obj.Body.Close()
	flipped := bytes.Clone(whole)
	flipped[len(flipped)/2] ^= 0x20
	name := strings.TrimPrefix(last, "pitr/")
	for _, damage := range []struct {
		what string
		data []byte
	}{{"cut short", whole[:len(whole)/2]}, {"a byte changed", flipped}} {
		if _, err := s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(last), Body: bytes.NewReader(damage.data)}); err != nil {
			t.Fatal(err)
		}
		dump := filepath.Join(t.TempDir(), "dump")
		code, out := edgenodeCmd(t, nil, "restore", "--config", cfgFile, "--to-time", time.Now().UTC().Format(time.RFC3339Nano), "--dump", dump)
		if code == 0 || !strings.Contains(out, name) || !strings.Contains(out, "checksum mismatch") || !strings.Contains(out, "nothing was restored") {
			t.Errorf("restore over a segment %s: exit %d, want a refusal naming %s:\n%s", damage.what, code, name, out)
		}
		if _, err := os.Stat(dump); err == nil {
			t.Errorf("a refused restore (segment %s) wrote %s", damage.what, dump)
		}
	}

	// A missing segment (ops 1-21): the restore names the ops missing.
	if _, err := s3c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: list.Contents[0].Key}); err != nil {
		t.Fatal(err)
	}
	dump = filepath.Join(t.TempDir(), "dump")
	code, out = edgenodeCmd(t, nil, "restore", "--config", cfgFile, "--to-time", time.Now().UTC().Format(time.RFC3339Nano), "--dump", dump)
	if want := fmt.Sprintf("ops %s:1 to %s:21 are missing", origin, origin); code == 0 || !strings.Contains(out, want) || !strings.Contains(out, "nothing was restored") {
		t.Errorf("restore without the first segment: exit %d, want a refusal naming %q:\n%s", code, want, out)
	}
	if _, err := os.Stat(dump); err == nil {
		t.Errorf("a refused restore (a segment missing) wrote %s", dump)
	}
}
