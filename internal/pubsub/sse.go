package pubsub

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// parseEventID parses an SSE event id or a since parameter:
// "{channel}@{epoch}:{offset}".
func parseEventID(s string) (channel string, pos Position, ok bool) {
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return "", Position{}, false
	}
	channel = s[:at]
	epoch, off, found := strings.Cut(s[at+1:], ":")
	if !found || !validEpoch(epoch) {
		return "", Position{}, false
	}
	n, err := strconv.ParseUint(off, 10, 64)
	if err != nil || len(off) > 20 {
		return "", Position{}, false
	}
	if _, _, ok := splitChannel(channel); !ok {
		return "", Position{}, false
	}
	return channel, Position{epoch, n}, true
}

// serveSSE streams the same frames as the websocket, as Server-Sent Events:
//
//	GET /sse?channel=demo/thread-1[&channel=...][&token=...][&since=demo/thread-1@k3j5x2ab:41]
//
// Each frame is one event whose data is the frame's JSON; messages carry
// the id "{channel}@{epoch}:{offset}", so a browser's EventSource resumes by
// itself (Last-Event-ID) after a dropped connection.
func (p *PubSub) serveSSE(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	names := q["channel"]
	if len(names) == 0 || len(names) > p.o().MaxSubsPerConn {
		p.refuse(codeBadChannel)
		sseRefuse(w, http.StatusBadRequest, codeBadChannel, "want 1 to "+strconv.Itoa(p.o().MaxSubsPerConn)+" channel parameters")
		return
	}
	tok := q.Get("token")
	since := map[string]Position{}
	for _, s := range q["since"] {
		if ch, pos, ok := parseEventID(s); ok {
			since[ch] = pos
		}
	}
	resumed := false
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		// A reconnecting EventSource: the id is the newest position it
		// has, for one channel. The other channels' gaps are unknown.
		resumed = true
		if ch, pos, ok := parseEventID(id); ok {
			since[ch] = pos
		}
	}

	t, ip, ok := p.checkHandshake(w, r)
	if !ok {
		return
	}
	c := &conn{p: p, kind: kindSSE, ip: ip, origin: r.Header.Get("Origin"), tenant: t,
		notify: make(chan struct{}, 1), done: make(chan struct{})}

	// Authorize every channel before answering: a stream whose channels are
	// all refused is answered 403, which also stops EventSource from
	// retrying; partial refusals become error events in the stream.
	type sub struct {
		t     *tenant
		name  string
		since *Position
	}
	var allowed []sub
	var refused []serverFrame
	for _, name := range names {
		t, code := p.authorize(c, name, tok)
		if code != "" {
			refused = append(refused, serverFrame{Type: typeError, Code: code, Reason: refusalText[code], Channel: name})
			continue
		}
		s := sub{t: t, name: name}
		if pos, ok := since[name]; ok {
			s.since = &pos
		} else if resumed {
			s.since = &Position{} // matches no epoch: must reload
		}
		allowed = append(allowed, s)
	}
	if len(allowed) == 0 {
		p.release(ip)
		sseRefuse(w, http.StatusForbidden, refused[0].Code, refused[0].Reason)
		return
	}
	if !p.admit(c) {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "node draining: reconnect", http.StatusServiceUnavailable)
		return
	}
	defer p.wg.Done()
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx and friends: do not buffer
	if o := r.Header.Get("Origin"); o != "" {
		// The Origin passed the tenant's allow-list in authorize: let a
		// widget embedded on that site read the stream (EventSource is
		// subject to CORS).
		h.Set("Access-Control-Allow-Origin", o)
		h.Add("Vary", "Origin")
	}
	w.WriteHeader(http.StatusOK)
	// retry: how long EventSource waits before reconnecting.
	if _, err := w.Write([]byte("retry: 2000\n\n")); err != nil {
		c.terminate("write_error")
		return
	}
	for _, f := range refused {
		c.enqueue(connFrame(kindSSE, f))
	}
	for _, s := range allowed {
		if code := p.join(c, s.t, s.name, s.since, ""); code != "" {
			c.clientError(code, refusalText[code], "", s.name)
		}
	}
	if err := rc.Flush(); err != nil {
		c.terminate("write_error")
		return
	}

	ctxDone := r.Context().Done()
	for {
		select {
		case <-c.done:
			return
		case <-ctxDone:
			c.terminate("client_close")
			return
		case <-c.notify:
		}
		c.mu.Lock()
		batch := c.q
		c.q = nil
		closing := c.state == stateClosing
		c.mu.Unlock()
		err := p.writeSSE(rc, w, batch)
		if err != nil {
			c.terminate("write_error")
			return
		}
		if closing {
			c.terminate("")
			return
		}
	}
}

func (p *PubSub) writeSSE(rc *http.ResponseController, w http.ResponseWriter, batch []qitem) error {
	if len(batch) == 0 {
		return nil
	}
	_ = rc.SetWriteDeadline(time.Now().Add(p.opts.WriteTimeout))
	var err error
	delivered := 0
	for _, it := range batch {
		if err == nil {
			_, err = w.Write(it.m.sseBytes())
		}
		if it.live {
			it.m.done()
			delivered++
		}
	}
	if err == nil {
		err = rc.Flush()
	}
	if err != nil {
		p.met.drops.WithLabelValues("closed").Add(float64(delivered))
		return err
	}
	p.met.deliveries.Add(float64(delivered))
	return nil
}

// sseRefuse answers a refused stream with a JSON error body.
func sseRefuse(w http.ResponseWriter, status int, code, reason string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(serverFrame{Type: typeError, Code: code, Reason: reason})
}
