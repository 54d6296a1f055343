package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/testkit"
)

// conflictsCLI runs `edgenode conflicts ARGS` against node p's admin
// listener, as an operator would.
func conflictsCLI(t *testing.T, p *nodeProc, args ...string) (string, error) {
	t.Helper()
	args = append([]string{"conflicts"}, args...)
	args = append(args, "--admin", p.admin, "--token-file", filepath.Join(p.dataDir, "publish.secret"))
	var out, errb bytes.Buffer
	cmd := exec.Command(binPath, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("edgenode %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

type parked struct {
	ID    string          `json:"id"`
	NS    string          `json:"ns"`
	DocID json.RawMessage `json:"doc_id"`
}

func listConflicts(t *testing.T, p *nodeProc) ([]parked, error) {
	out, err := conflictsCLI(t, p, "list", "--json")
	if err != nil {
		return nil, err
	}
	var ans struct{ Conflicts []parked }
	if err := json.Unmarshal([]byte(out), &ans); err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	return ans.Conflicts, nil
}

// usersWith returns the _ids of the documents of app.users with email.
func usersWith(ctx context.Context, cl *mongo.Client, email string) ([]string, error) {
	cur, err := cl.Database(replDB).Collection("users").Find(ctx, bson.D{{Key: "email", Value: email}})
	if err != nil {
		return nil, err
	}
	var docs []struct {
		ID string `bson:"_id"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return nil, err
	}
	var ids []string
	for _, d := range docs {
		ids = append(ids, d.ID)
	}
	slices.Sort(ids)
	return ids, nil
}

// TestConflictsResolveReplicates makes real unique-key collisions on a
// 2-node cluster (each node takes a document with the same email while a
// partition separates them; once healed, each node parks the other's),
// lists and shows them with the CLI, resolves each collision on node1 only
// (first keeping the stored document, then the parked one) and checks that
// both nodes end with the same documents and no conflict left: the
// resolution replicated, and node2 settled its own record of the same
// collision by itself.
func TestConflictsResolveReplicates(t *testing.T) {
	needNetns(t)
	rn := setupReplNet(t, 2)
	c := nsCluster(t, rn, 2, true)
	for i := range 2 {
		p := *c.nodes[i]
		c.nodes[i] = startNodeIn(t, rn.ns[i], c.cfgs[i], &p)
	}
	waitWritable(t, c, 60*time.Second, 0, 1)
	cls := []*mongo.Client{mongoClient(t, c.nodes[0]), mongoClient(t, c.nodes[1])}
	ctx := context.Background()
	users := func(i int) *mongo.Collection { return cls[i].Database(replDB).Collection("users") }
	if _, err := users(0).Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "email", Value: 1}},
		Options: options.Index().SetUnique(true).SetName("email_unique")}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "the unique index on node2", func() bool {
		specs, err := users(1).Indexes().ListSpecifications(ctx)
		return err == nil && slices.ContainsFunc(specs, func(s mongo.IndexSpecification) bool { return s.Name == "email_unique" })
	})

	for round, keep := range []string{"stored", "parked"} {
		email := fmt.Sprintf("x%d@example.org", round)
		a, b := fmt.Sprintf("a%d", round), fmt.Sprintf("b%d", round)
		rn.cut(1, true)
		if _, err := users(0).InsertOne(ctx, bson.D{{Key: "_id", Value: a}, {Key: "email", Value: email}, {Key: "by", Value: "node1"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := users(1).InsertOne(ctx, bson.D{{Key: "_id", Value: b}, {Key: "email", Value: email}, {Key: "by", Value: "node2"}}); err != nil {
			t.Fatal(err)
		}
		rn.cut(1, false)
		var mine, theirs []parked
		var err1, err2 error
		parkedBoth := func() bool {
			mine, err1 = listConflicts(t, c.nodes[0])
			theirs, err2 = listConflicts(t, c.nodes[1])
			return err1 == nil && err2 == nil && len(mine) == 1 && len(theirs) == 1
		}
		// Generous: under a loaded CI machine this once took over a minute;
		// on failure say what each node reported, and its replication.
		if !testkit.Poll(2*time.Minute, parkedBoth) {
			st1, _ := replStatus(c.nodes[0])
			st2, _ := replStatus(c.nodes[1])
			t.Fatalf("each node to park the other's document: node1 %v %+v (repl %+v); node2 %v %+v (repl %+v)", err1, mine, st1, err2, theirs, st2)
		}
		id := mine[0].ID
		if string(mine[0].DocID) != `"`+b+`"` || mine[0].NS != replDB+".users" {
			t.Fatalf("node1 parked %+v, want node2's document %s", mine[0], b)
		}
		out, err := conflictsCLI(t, c.nodes[0], "list")
		if err != nil || !strings.Contains(out, id) {
			t.Fatalf("conflicts list: %v\n%s", err, out)
		}
		out, err = conflictsCLI(t, c.nodes[0], "show", id)
		if err != nil || !strings.Contains(out, `"colliding"`) || !strings.Contains(out, `"`+a+`"`) {
			t.Fatalf("conflicts show does not name the stored document %s it collides with: %v\n%s", a, err, out)
		}
		if out, err = conflictsCLI(t, c.nodes[0], "resolve", id, "--keep", keep); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %s", round, strings.TrimSpace(out))

		want := []string{a}
		if keep == "parked" {
			want = []string{b}
		}
		testkit.WaitFor(t, 60*time.Second, fmt.Sprintf("both nodes to hold only %v and no conflict (keep %s)", want, keep), func() bool {
			for i := range 2 {
				ids, err := usersWith(ctx, cls[i], email)
				if err != nil || !slices.Equal(ids, want) {
					return false
				}
				l, err := listConflicts(t, c.nodes[i])
				if err != nil || len(l) != 0 {
					return false
				}
			}
			return true
		})
	}
	// Byte for byte, as the replication tests compare.
	var docs [2][]bson.Raw
	for i := range 2 {
		cur, err := users(i).Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
		if err != nil {
			t.Fatal(err)
		}
		for cur.Next(ctx) {
			docs[i] = append(docs[i], slices.Clone(cur.Current))
		}
		if err := cur.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.EqualFunc(docs[0], docs[1], func(x, y bson.Raw) bool { return bytes.Equal(x, y) }) {
		t.Fatalf("the nodes differ:\nnode1 %v\nnode2 %v", docs[0], docs[1])
	}
	t.Logf("both nodes hold %v", docs[0])
	if _, err := conflictsCLI(t, c.nodes[0], "resolve", "nope:1", "--keep", "stored"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("resolving an unknown conflict: %v, want a 404", err)
	}
}
