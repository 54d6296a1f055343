package cdn

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestPurgeBeforeKeepsNewerCopies: a purge that reaches this node late
// forgets the copy fetched before it, also after a restart (the index is
// rebuilt from disk with each copy's fetch time), and never a copy fetched
// after it; a 404 remembered before it is forgotten too.
func TestPurgeBeforeKeepsNewerCopies(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.TTL = time.Hour; o.NegativeTTL = time.Hour })
	e.put("late/a.txt", []byte("v1"), "text/plain")
	before := time.Now()
	e.get("late/a.txt")
	if r := e.get("late/a.txt"); r.header.Get("X-Cache") != "HIT" {
		t.Fatal("not cached")
	}
	// A purge from before the copy was fetched leaves it.
	if dropped, err := e.cache.PurgeBefore("late/a.txt", before.Add(-time.Second)); err != nil || dropped {
		t.Fatalf("older purge: dropped %v, %v", dropped, err)
	}
	// The node goes down; the object changes and is purged elsewhere.
	e.restart()
	e.put("late/a.txt", []byte("v2"), "text/plain")
	if r := e.get("late/a.txt"); string(r.body) != "v1" || r.header.Get("X-Cache") != "HIT" {
		t.Fatalf("after restart: %q %q", r.body, r.header.Get("X-Cache"))
	}
	purgedAt := time.Now()
	if dropped, err := e.cache.PurgeBefore("late/a.txt", purgedAt); err != nil || !dropped {
		t.Fatalf("late purge: dropped %v, %v", dropped, err)
	}
	if r := e.get("late/a.txt"); string(r.body) != "v2" || r.header.Get("X-Cache") != "MISS" {
		t.Fatalf("after the late purge: %q %q", r.body, r.header.Get("X-Cache"))
	}
	// The same purge once more (it is read again after every restart):
	// the copy fetched since stays.
	if dropped, _ := e.cache.PurgeBefore("late/a.txt", purgedAt); dropped {
		t.Error("the purge dropped the copy fetched after it")
	}
	if r := e.get("late/a.txt"); r.header.Get("X-Cache") != "HIT" {
		t.Errorf("copy fetched after the purge: %q", r.header.Get("X-Cache"))
	}

	// A remembered 404.
	if r := e.get("late/none.txt"); r.status != 404 {
		t.Fatalf("missing object: %d", r.status)
	}
	e.put("late/none.txt", []byte("here now"), "text/plain")
	if dropped, _ := e.cache.PurgeBefore("late/none.txt", time.Now()); !dropped {
		t.Error("the remembered 404 was kept")
	}
	if r := e.get("late/none.txt"); r.status != 200 || string(r.body) != "here now" {
		t.Errorf("after purging the 404: %d %q", r.status, r.body)
	}
	if _, err := e.cache.PurgeBefore("../x", time.Now()); err == nil {
		t.Error("a bad key was accepted")
	}
}

// TestPurgeHookFailureIs503: the route purges here whatever the hooks
// say, but says so when one failed (the purge is not recorded for the
// nodes that are down), so the operator retries.
func TestPurgeHookFailureIs503(t *testing.T) {
	e := newEnv(t, nil)
	var gotAt time.Time
	e.cache.OnPurge(func(_ context.Context, _ string, at time.Time) error {
		gotAt = at
		return errors.New("recording the purge: database unreachable")
	})
	e.put("h/x.txt", []byte("x"), "text/plain")
	e.get("h/x.txt")
	before := time.Now()
	req, _ := http.NewRequest(http.MethodDelete, e.admin.URL+"/v1/cache/h/x.txt", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "database unreachable") {
		t.Errorf("purge with a failing hook: %d %q", res.StatusCode, body)
	}
	if gotAt.Before(before.Add(-time.Second)) || gotAt.After(time.Now()) {
		t.Errorf("hook got purge time %v", gotAt)
	}
	if r := e.get("h/x.txt"); r.header.Get("X-Cache") != "MISS" {
		t.Errorf("not purged here: %q", r.header.Get("X-Cache"))
	}
}
