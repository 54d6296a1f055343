package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/mongoproxy"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
	"github.com/edgenode/edgenode/internal/pubsub"
)

// rig is the demo app on real parts: embedded FerretDB behind the real Mongo
// proxy, real pubsub, real HTTP.
type rig struct {
	app *App
	srv *httptest.Server
	ps  *pubsub.PubSub
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newRig(t *testing.T, node string, secret []byte) *rig {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := embedded.Start(ctx, filepath.Join(dir, "db"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Stop)
	reg := prometheus.NewRegistry()
	proxy, err := mongoproxy.New(mongoproxy.Options{Listen: "127.0.0.1:0", Upstream: db.URI(), NodeID: node, DataDir: dir, Replicate: []string{"*"}}, quiet(), reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := proxy.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = proxy.Shutdown(ctx)
	})
	tenant := pubsub.Tenant{Name: "demo", Public: []string{ChannelPrefix + "*"}}
	if secret != nil {
		tenant = pubsub.Tenant{Name: "demo", Secret: secret}
	}
	ps, err := pubsub.New(pubsub.Options{Tenants: []pubsub.Tenant{tenant}}, nil, quiet(), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ps.Close() })
	app, err := New(Options{
		NodeID:      node,
		MongoURI:    "mongodb://" + proxy.Addr().String() + "/",
		TokenSecret: secret,
		Publish: func(ctx context.Context, channel string, data []byte) error {
			_, err := ps.Publish(channel, data)
			return err
		},
	}, quiet(), reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := app.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Stop(context.Background()) })
	mux := http.NewServeMux()
	for p, h := range app.Routes() {
		mux.Handle(p, h)
	}
	for p, h := range ps.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &rig{app: app, srv: srv, ps: ps}
}

func (r *rig) do(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, r.srv.URL+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, out
}

// stream subscribes to a channel with SSE and returns the frames.
func (r *rig) stream(t *testing.T, channel, token string) <-chan map[string]any {
	t.Helper()
	url := r.srv.URL + "/sse?channel=" + channel
	if token != "" {
		url += "&token=" + token
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("sse: %d %s", resp.StatusCode, b)
	}
	t.Cleanup(func() { resp.Body.Close() })
	ch := make(chan map[string]any, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var f map[string]any
				if json.Unmarshal([]byte(d), &f) == nil {
					ch <- f
				}
			}
		}
	}()
	return ch
}

func next(t *testing.T, ch <-chan map[string]any) map[string]any {
	t.Helper()
	select {
	case f, ok := <-ch:
		if !ok {
			t.Fatal("stream ended")
		}
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no frame within 10s")
	}
	return nil
}

func TestCommentsAndVotes(t *testing.T) {
	r := newRig(t, "node1", nil)
	code, st := r.do(t, "GET", "/demo/api/threads/t1", "")
	if code != 200 || st["channel"] != "demo/comments-t1" || st["node"] != "node1" || len(st["comments"].([]any)) != 0 {
		t.Fatalf("empty thread: %d %v", code, st)
	}
	frames := r.stream(t, "demo/comments-t1", "")
	if f := next(t, frames); f["type"] != "subscribed" {
		t.Fatalf("first frame %v", f)
	}

	code, out := r.do(t, "POST", "/demo/api/threads/t1/comments", `{"name":"Ada","text":"  hello <b>world</b>  "}`)
	if code != 201 {
		t.Fatalf("post: %d %v", code, out)
	}
	c := out["comment"].(map[string]any)
	id := c["id"].(string)
	if c["text"] != "hello <b>world</b>" || c["name"] != "Ada" || c["node"] != "node1" || !idRe.MatchString(id) {
		t.Errorf("comment %v", c)
	}
	f := next(t, frames)
	data := f["data"].(map[string]any)
	if f["type"] != "message" || data["kind"] != "comment" || data["comment"].(map[string]any)["id"] != id {
		t.Fatalf("announcement %v", f)
	}

	for want := 1.0; want <= 2; want++ {
		code, v := r.do(t, "POST", "/demo/api/threads/t1/comments/"+id+"/vote", "")
		if code != 200 || v["count"] != want || v["node"] != "node1" {
			t.Fatalf("vote %v: %d %v", want, code, v)
		}
		f := next(t, frames)["data"].(map[string]any)
		if f["kind"] != "vote" || f["id"] != id || f["count"] != want {
			t.Fatalf("vote announcement %v", f)
		}
	}

	// A second comment, then the thread in order with the counters.
	time.Sleep(2 * time.Millisecond)
	r.do(t, "POST", "/demo/api/threads/t1/comments", `{"text":"second"}`)
	r.do(t, "POST", "/demo/api/threads/other/comments", `{"text":"elsewhere"}`)
	_, st = r.do(t, "GET", "/demo/api/threads/t1", "")
	cs := st["comments"].([]any)
	if len(cs) != 2 {
		t.Fatalf("thread: %v", cs)
	}
	first, second := cs[0].(map[string]any), cs[1].(map[string]any)
	if first["id"] != id || first["votes"].(map[string]any)["node1"] != 2.0 || second["text"] != "second" || second["name"] != "anonymous" {
		t.Errorf("thread: %v", cs)
	}
}

func TestVoteBeforeTheCommentArrives(t *testing.T) {
	// A vote on a node where the comment has not replicated yet is kept
	// (an upsert of the counter) and merges with the comment's $set later.
	r := newRig(t, "node2", nil)
	id := newID(time.Now())
	code, v := r.do(t, "POST", "/demo/api/threads/t1/comments/"+id+"/vote", "")
	if code != 200 || v["count"] != 1.0 {
		t.Fatalf("vote: %d %v", code, v)
	}
	_, st := r.do(t, "GET", "/demo/api/threads/t1", "")
	if n := len(st["comments"].([]any)); n != 0 {
		t.Errorf("a bare counter is listed as a comment: %v", st)
	}
}

func TestRefusals(t *testing.T) {
	r := newRig(t, "node1", nil)
	for _, c := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/demo/api/threads/Bad_Thread", "", 400},
		{"POST", "/demo/api/threads/t1/comments", `{"text":"   "}`, 400},
		{"POST", "/demo/api/threads/t1/comments", `{"text":"` + strings.Repeat("x", 1001) + `"}`, 400},
		{"POST", "/demo/api/threads/t1/comments", `{"text":"` + strings.Repeat("x", 5000) + `"}`, 413},
		{"POST", "/demo/api/threads/t1/comments", `{"text":"a\u0000b"}`, 400},
		{"POST", "/demo/api/threads/t1/comments", `{"text":"ok","name":"` + strings.Repeat("n", 41) + `"}`, 400},
		{"POST", "/demo/api/threads/t1/comments", `not json`, 400},
		{"POST", "/demo/api/threads/t1/comments/nope/vote", "", 400},
		{"POST", "/demo/api/threads/t1/comments/c0000000000000000000000/vote", "", 400},
	} {
		code, out := r.do(t, c.method, c.path, c.body)
		if code != c.want || out["error"] == nil {
			t.Errorf("%s %s %.40s: %d %v, want %d with an error", c.method, c.path, c.body, code, out, c.want)
		}
	}
}

func TestPageAndWidget(t *testing.T) {
	r := newRig(t, "node1", nil)
	resp, err := http.Get(r.srv.URL + "/demo/widget.js")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	et := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || !bytes.Contains(js, []byte("data-edgenode-thread")) || et == "" ||
		resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("widget: %d %v", resp.StatusCode, resp.Header)
	}
	req, _ := http.NewRequest("GET", r.srv.URL+"/demo/widget.js", nil)
	req.Header.Set("If-None-Match", et)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("conditional widget: %d", resp.StatusCode)
	}
	resp, err = http.Get(r.srv.URL + "/demo/?thread=launch-day")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(page, []byte(`data-edgenode-thread="launch-day"`)) || !bytes.Contains(page, []byte("node1")) {
		t.Errorf("page: %d %s", resp.StatusCode, page)
	}
	if code, _ := r.do(t, "GET", "/demo/?thread=%3Cscript%3E", ""); code != 400 {
		t.Errorf("bad thread on the page: %d", code)
	}
	code, _ := r.do(t, "OPTIONS", "/demo/api/threads/t1/comments", "")
	if code != http.StatusNoContent {
		t.Errorf("preflight: %d", code)
	}
}

func TestPrivateTenantGetsATokenPerThread(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	r := newRig(t, "node1", secret)
	_, st := r.do(t, "GET", "/demo/api/threads/t1", "")
	tok, _ := st["token"].(string)
	if tok == "" {
		t.Fatalf("no token: %v", st)
	}
	frames := r.stream(t, "demo/comments-t1", tok)
	if f := next(t, frames); f["type"] != "subscribed" {
		t.Fatalf("with the token: %v", f)
	}
	// The token is for that thread only.
	resp, err := http.Get(r.srv.URL + "/sse?channel=demo/comments-t2&token=" + tok)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("token used for another thread: %d", resp.StatusCode)
	}
}

func TestNewIDOrder(t *testing.T) {
	a := newID(time.UnixMilli(1_700_000_000_000))
	b := newID(time.UnixMilli(1_700_000_000_001))
	if !(a < b) || !idRe.MatchString(a) || len(a) != 22 {
		t.Errorf("%s %s", a, b)
	}
}
