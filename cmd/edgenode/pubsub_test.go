package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/edgenode/edgenode/internal/testkit"
)

func adminTokenOf(t testing.TB, p *nodeProc) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.dataDir, "publish.secret"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func publish(t testing.TB, p *nodeProc, token, channel, data string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+p.admin+"/v1/publish",
		strings.NewReader(`{"channel":"`+channel+`","data":`+data+`}`))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

type frame struct {
	Type    string          `json:"type"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

func subscribeWS(t testing.TB, p *nodeProc, channel string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	ws, _, err := d.Dial("wss://"+p.https+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	if err := ws.WriteJSON(map[string]string{"type": "subscribe", "channel": channel}); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f frame
	if err := ws.ReadJSON(&f); err != nil || f.Type != "subscribed" {
		t.Fatalf("subscribe: %+v %v", f, err)
	}
	return ws
}

func nextMessage(t testing.TB, ws *websocket.Conn) frame {
	t.Helper()
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		var f frame
		if err := ws.ReadJSON(&f); err != nil {
			t.Fatalf("read: %v", err)
		}
		if f.Type == "message" {
			return f
		}
	}
}

// The embedded node's pubsub: a websocket and an SSE subscriber get a
// message published on the admin API with the token made in the data
// folder; without the token the publish is refused.
func TestEmbeddedNodePubSub(t *testing.T) {
	cfg, p := nodeConfig(t, "")
	startNode(t, cfg, p)
	token := adminTokenOf(t, p)
	ws := subscribeWS(t, p, "demo/thread-1")

	req, _ := http.NewRequest("GET", "https://"+p.https+"/sse?channel=demo/thread-1", nil)
	sse, err := httpsClient(true).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Body.Close()
	lines := bufio.NewScanner(sse.Body)
	waitSSE := func(want string) {
		t.Helper()
		for lines.Scan() {
			if strings.HasPrefix(lines.Text(), "data:") && strings.Contains(lines.Text(), want) {
				return
			}
		}
		t.Fatalf("SSE ended before %q: %v", want, lines.Err())
	}
	waitSSE(`"subscribed"`)

	if code := publish(t, p, "", "demo/thread-1", `{"text":"nope"}`); code != http.StatusUnauthorized {
		t.Errorf("publish without token: %d", code)
	}
	if code := publish(t, p, token, "demo/thread-1", `{"text":"hello"}`); code != 200 {
		t.Fatalf("publish: %d", code)
	}
	if f := nextMessage(t, ws); f.Channel != "demo/thread-1" || string(f.Data) != `{"text":"hello"}` {
		t.Errorf("websocket got %+v", f)
	}
	waitSSE(`"text":"hello"`)
}

// A subscriber on one node receives a publish made on another, through the
// mesh's peer links.
func TestClusterPubSub(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several processes")
	}
	c := newCluster(t, 2, "")
	c.startAll()
	testkit.WaitFor(t, 15*time.Second, "two alive members", func() bool {
		st := c.states(0)
		return st["node1"] == "alive" && st["node2"] == "alive"
	})
	ws := subscribeWS(t, c.nodes[1], "demo/thread-1")
	token := adminTokenOf(t, c.nodes[0])
	// The peer link may still be coming up: publish until one arrives.
	got := make(chan frame, 1)
	go func() {
		ws.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			var f frame
			if err := ws.ReadJSON(&f); err != nil {
				close(got)
				return
			}
			if f.Type == "message" {
				got <- f
				return
			}
		}
	}()
	deadline := time.After(20 * time.Second)
	for {
		if code := publish(t, c.nodes[0], token, "demo/thread-1", `{"text":"from node1"}`); code != 200 {
			t.Fatalf("publish: %d", code)
		}
		select {
		case f, ok := <-got:
			if !ok || string(f.Data) != `{"text":"from node1"}` {
				t.Fatalf("node2 subscriber got %+v", f)
			}
			return
		case <-deadline:
			t.Fatal("publish on node1 never reached the subscriber on node2")
		case <-time.After(500 * time.Millisecond):
		}
	}
}
