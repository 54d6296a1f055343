package h2_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/h2"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// What a handler sees and sends, through Go's own HTTP/2 client: the
// ResponseWriter is meant to do what net/http's does, so these tests check
// the behaviour a handler written against net/http relies on.

// handlerServer serves h and returns the server's base URL and an HTTP/2
// client for it.
func handlerServer(t *testing.T, h http.HandlerFunc) (string, *http.Client) {
	t.Helper()
	ts := serve(t, h2.Options{Handler: h, MaxHeaderListSize: 64 << 10})
	c := client()
	t.Cleanup(c.CloseIdleConnections)
	return "https://" + ts.addr, c
}

// handlerCtx bounds a client call, so a server that never answers fails the
// test instead of hanging it.
func handlerCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// unsizedBody hides a reader's type from http.NewRequest, so the client
// cannot know the body's length and sends no Content-Length.
type unsizedBody struct{ io.Reader }

// TestHandlerRequestBody: request bodies reach the handler whole, the
// declared length as r.ContentLength. A 1 MiB body is four times the
// default stream window (256 KiB), so it only arrives if reading it
// reopens the windows; the echo runs in both directions at once.
func TestHandlerRequestBody(t *testing.T) {
	big := make([]byte, 1<<20)
	rand.Read(big)
	type seen struct {
		length int64
		err    error
	}
	seenc := make([]chan seen, 4) // one per case, by path
	for i := range seenc {
		seenc[i] = make(chan seen, 1)
	}
	url, c := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		i, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		if r.ContentLength >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(r.ContentLength, 10))
		}
		// A type of its own: sniffing is TestHandlerAutomaticFields' business.
		w.Header().Set("Content-Type", "application/octet-stream")
		_, err := io.Copy(w, r.Body)
		seenc[i] <- seen{r.ContentLength, err}
	})
	for i, tc := range []struct {
		name     string
		body     []byte
		declared bool
		// wantRespLen is the response's Content-Length: the handler's when
		// it set one, the server's own for a body small enough to hold
		// whole, none (-1) otherwise.
		wantRespLen int64
	}{
		{"1MiB declared", big, true, 1 << 20},
		{"1MiB undeclared", big, false, -1},
		{"small declared", big[:1000], true, 1000},
		{"small undeclared", big[:1000], false, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = bytes.NewReader(tc.body)
			wantReqLen := int64(len(tc.body))
			if !tc.declared {
				body = unsizedBody{body}
				wantReqLen = -1
			}
			req, _ := http.NewRequestWithContext(handlerCtx(t), http.MethodPost, url+"/"+strconv.Itoa(i), body)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			s := <-seenc[i]
			if s.err != nil {
				t.Errorf("handler's copy: %v", s.err)
			}
			if s.length != wantReqLen {
				t.Errorf("r.ContentLength %d, want %d", s.length, wantReqLen)
			}
			if !bytes.Equal(got, tc.body) {
				t.Errorf("echo: %d bytes back, want %d (equal %v)", len(got), len(tc.body), bytes.Equal(got, tc.body))
			}
			if resp.ContentLength != tc.wantRespLen {
				t.Errorf("response Content-Length %d, want %d", resp.ContentLength, tc.wantRespLen)
			}
		})
	}
}

// TestHandlerBodyCloseEarly: a handler that reads part of a body and
// closes it answers at once, its later reads fail, and the client (still
// sending) gets the whole answer; the connection serves the next request.
func TestHandlerBodyCloseEarly(t *testing.T) {
	big := make([]byte, 1<<20) // past the windows: the client is still sending
	rand.Read(big)
	afterClose := make(chan error, 1)
	url, c := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			io.WriteString(w, "next")
			return
		}
		head := make([]byte, 10)
		if _, err := io.ReadFull(r.Body, head); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		r.Body.Close()
		_, err := r.Body.Read(make([]byte, 10))
		afterClose <- err
		w.Write(head)
	})
	req, _ := http.NewRequestWithContext(handlerCtx(t), http.MethodPost, url+"/", bytes.NewReader(big))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, big[:10]) {
		t.Fatalf("status %d, body %x, err %v; want 200 and %x", resp.StatusCode, got, err, big[:10])
	}
	if err := <-afterClose; err == nil {
		t.Error("Read after Close succeeded")
	}
	req, _ = http.NewRequestWithContext(handlerCtx(t), http.MethodGet, url+"/", nil)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatalf("next request: %v", err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != "next" {
		t.Fatalf("next request: %q", got)
	}
}

// TestHandlerFlush: Flush sends what the handler wrote so far while the
// handler still runs. The handler waits, after flushing, until the client
// has read the first chunk: a Flush that did not send would leave both
// waiting until the handler gives up.
func TestHandlerFlush(t *testing.T) {
	clientGot := make(chan struct{})
	handlerErr := make(chan error, 1)
	url, c := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		if err := http.NewResponseController(w).Flush(); err != nil {
			handlerErr <- fmt.Errorf("Flush: %w", err)
			return
		}
		select {
		case <-clientGot:
		case <-time.After(2 * time.Second):
			handlerErr <- errors.New("the client did not get the flushed chunk while the handler ran")
			return
		}
		io.WriteString(w, "second\n")
		handlerErr <- nil
	})
	req, _ := http.NewRequestWithContext(handlerCtx(t), http.MethodGet, url+"/stream", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len("first\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first\n" {
		t.Fatalf("first chunk %q: %v", first, err)
	}
	close(clientGot)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "second\n" {
		t.Fatalf("rest %q: %v", rest, err)
	}
	if err := <-handlerErr; err != nil {
		t.Fatal(err)
	}
}

// TestHandlerResponseTrailers: trailers declared with the Trailer header
// before the body, and trailers named with http.TrailerPrefix after it,
// reach the client as resp.Trailer once the body is read. A declared
// trailer's value, set after the body was written, must not also go out
// in the header: net/http sends the header as it was at WriteHeader (the
// first Write), and so must a server that holds a small body back.
func TestHandlerResponseTrailers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    http.Header
	}{
		{"declared", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "X-Sum, X-Count")
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "body")
			w.Header().Set("X-Sum", "abc")
			w.Header().Set("X-Count", "2")
		}, http.Header{"X-Sum": {"abc"}, "X-Count": {"2"}}},
		{"declared, flushed", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "X-Sum")
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "body")
			http.NewResponseController(w).Flush()
			w.Header().Set("X-Sum", "abc")
		}, http.Header{"X-Sum": {"abc"}}},
		{"prefix", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "body")
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
		}, http.Header{"X-Late": {"late"}}},
		{"declared and prefix, no body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "X-Sum")
			w.WriteHeader(http.StatusOK)
			w.Header().Set("X-Sum", "abc")
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
		}, http.Header{"X-Sum": {"abc"}, "X-Late": {"late"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, c := handlerServer(t, tc.handler)
			req, _ := http.NewRequestWithContext(handlerCtx(t), http.MethodGet, url+"/", nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			for k := range tc.want {
				if v, ok := resp.Header[k]; ok {
					t.Errorf("trailer %s in the header too: %q", k, v)
				}
			}
			if _, err := io.ReadAll(resp.Body); err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if !slices.Equal(resp.Trailer[k], v) {
					t.Errorf("trailer %s = %q, want %q (all: %v)", k, resp.Trailer[k], v, resp.Trailer)
				}
			}
		})
	}
}

// TestHandlerHeaderAfterWrite: header fields set after the first Write
// (which implies WriteHeader) are not sent, as with net/http, even when
// the server still holds the body and has not sent the header yet.
func TestHandlerHeaderAfterWrite(t *testing.T) {
	url, c := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "body")
		w.Header().Set("X-After", "1")
	})
	req, _ := http.NewRequestWithContext(handlerCtx(t), http.MethodGet, url+"/", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if v := resp.Header.Get("X-After"); v != "" {
		t.Fatalf("X-After: %q sent, set after the first Write", v)
	}
}

// TestHandlerRequestTrailers: a client's trailers, declared in its Trailer
// header, are in r.Trailer once the handler has read the body to EOF.
func TestHandlerRequestTrailers(t *testing.T) {
	type seen struct {
		trailer http.Header
		body    string
		err     error
	}
	seenc := make([]chan seen, 2) // one per case, by path
	for i := range seenc {
		seenc[i] = make(chan seen, 1)
	}
	url, c := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		i, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		// r.Trailer is not to be read until the body is at EOF (the
		// server fills it then, as net/http's does).
		b, err := io.ReadAll(r.Body)
		seenc[i] <- seen{r.Trailer.Clone(), string(b), err}
	})
	for i, tc := range []struct {
		name string
		body io.Reader
	}{
		{"declared length", strings.NewReader("hello")},
		{"streamed", unsizedBody{strings.NewReader("hello")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(handlerCtx(t), http.MethodPost, url+"/"+strconv.Itoa(i), tc.body)
			req.Trailer = http.Header{"X-Req-Sum": {"v1"}}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			s := <-seenc[i]
			if s.err != nil || s.body != "hello" {
				t.Fatalf("body %q: %v", s.body, s.err)
			}
			if !slices.Equal(s.trailer["X-Req-Sum"], []string{"v1"}) {
				t.Errorf("r.Trailer after EOF: %v, want X-Req-Sum v1", s.trailer)
			}
		})
	}
}

// TestHandlerAutomaticFields: what the server adds to a handler's
// response, as net/http does: Content-Type sniffed from the body when the
// handler set none, Content-Length when the whole body is known, Date;
// HEAD answers without a body but with the GET's header; 204 and 304 have
// no body, and a handler's Write gets http.ErrBodyNotAllowed.
func TestHandlerAutomaticFields(t *testing.T) {
	const html = "<html><body>hello</body></html>"
	bigHTML := html + strings.Repeat(" ", 20<<10) // past what the writer holds back
	const absent = "(absent)"
	type tcase struct {
		name     string
		method   string
		handler  func(w http.ResponseWriter) error // the error of the Write that matters
		status   int
		body     string
		ctype    string // absent: no Content-Type
		clen     string // absent: no Content-Length
		date     string // "": any Date, but one
		writeErr error
	}
	cases := []tcase{
		{name: "sniffed html", method: "GET",
			handler: func(w http.ResponseWriter) error { _, err := io.WriteString(w, html); return err },
			status:  200, body: html, ctype: "text/html; charset=utf-8", clen: strconv.Itoa(len(html))},
		// An invalid Content-Length is dropped (and the right one sent), not
		// sent as it was: the header snapshot used to keep it.
		{name: "invalid content-length dropped", method: "GET",
			handler: func(w http.ResponseWriter) error {
				w.Header().Set("Content-Length", "abc")
				_, err := io.WriteString(w, "plain words")
				return err
			},
			status: 200, body: "plain words", ctype: "text/plain; charset=utf-8", clen: "11"},
		{name: "sniffed text", method: "GET",
			handler: func(w http.ResponseWriter) error { _, err := io.WriteString(w, "plain words"); return err },
			status:  200, body: "plain words", ctype: "text/plain; charset=utf-8", clen: "11"},
		// net/http sniffs the first Write whatever its size, not just one
		// the writer holds back.
		{name: "sniffed, first write large", method: "GET",
			handler: func(w http.ResponseWriter) error { _, err := io.WriteString(w, bigHTML); return err },
			status:  200, body: bigHTML, ctype: "text/html; charset=utf-8", clen: absent},
		{name: "handler's type and date kept", method: "GET",
			handler: func(w http.ResponseWriter) error {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Date", "Mon, 02 Jan 2006 15:04:05 GMT")
				_, err := io.WriteString(w, "{}")
				return err
			},
			status: 200, body: "{}", ctype: "application/json", clen: "2", date: "Mon, 02 Jan 2006 15:04:05 GMT"},
		{name: "empty", method: "GET",
			handler: func(w http.ResponseWriter) error { return nil },
			status:  200, ctype: absent, clen: "0"},
		{name: "HEAD, handler's length", method: "HEAD",
			handler: func(w http.ResponseWriter) error {
				w.Header().Set("Content-Type", "text/plain")
				w.Header().Set("Content-Length", "1234")
				return nil
			},
			status: 200, ctype: "text/plain", clen: "1234"},
		{name: "HEAD, body written", method: "HEAD",
			handler: func(w http.ResponseWriter) error {
				w.Header().Set("Content-Type", "text/plain")
				_, err := io.WriteString(w, "hello")
				return err
			},
			status: 200, ctype: "text/plain", clen: "5"},
		// A HEAD gets the header its GET would (RFC 9110 §9.3.2): net/http
		// sniffs what a HEAD's handler writes, though it sends none of it.
		{name: "HEAD, sniffed as GET", method: "HEAD",
			handler: func(w http.ResponseWriter) error { _, err := io.WriteString(w, html); return err },
			status:  200, ctype: "text/html; charset=utf-8", clen: strconv.Itoa(len(html))},
		{name: "204", method: "GET",
			handler: func(w http.ResponseWriter) error {
				w.WriteHeader(http.StatusNoContent)
				_, err := io.WriteString(w, "x")
				return err
			},
			status: 204, ctype: absent, clen: absent, writeErr: http.ErrBodyNotAllowed},
		{name: "304", method: "GET",
			handler: func(w http.ResponseWriter) error {
				w.Header().Set("Etag", `"v1"`)
				w.WriteHeader(http.StatusNotModified)
				_, err := io.WriteString(w, "x")
				return err
			},
			status: 304, ctype: absent, clen: absent, writeErr: http.ErrBodyNotAllowed},
	}
	writeErrs := make([]chan error, len(cases)) // one per case, by path
	for i := range writeErrs {
		writeErrs[i] = make(chan error, 1)
	}
	url, c := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		i, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		writeErrs[i] <- cases[i].handler(w)
	})
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(handlerCtx(t), tc.method, url+"/"+strconv.Itoa(i), nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if werr := <-writeErrs[i]; !errors.Is(werr, tc.writeErr) {
				t.Errorf("handler's Write: %v, want %v", werr, tc.writeErr)
			}
			if resp.StatusCode != tc.status || string(body) != tc.body {
				t.Errorf("status %d body %.40q (%d bytes), want %d %.40q", resp.StatusCode, body, len(body), tc.status, tc.body)
			}
			field := func(name string) string {
				if vs, ok := resp.Header[name]; ok {
					return strings.Join(vs, ", ")
				}
				return absent
			}
			if got := field("Content-Type"); got != tc.ctype {
				t.Errorf("Content-Type %q, want %q", got, tc.ctype)
			}
			if got := field("Content-Length"); got != tc.clen {
				t.Errorf("Content-Length %q, want %q", got, tc.clen)
			}
			date := field("Date")
			if _, err := http.ParseTime(date); err != nil || tc.date != "" && date != tc.date {
				t.Errorf("Date %q, want %q", date, cmp.Or(tc.date, "a date"))
			}
		})
	}
}

// TestHandlerRequestFields: the http.Request a handler gets is the one
// net/http's HTTP/2 server would build, cookie crumbs (the client sends
// each cookie as a field of its own) joined back into one Cookie field.
func TestHandlerRequestFields(t *testing.T) {
	reqc := make(chan *http.Request, 1)
	url, c := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		reqc <- r // read after the handler returned: only its plain fields
	})
	var local string
	ctx := httptrace.WithClientTrace(handlerCtx(t), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { local = info.Conn.LocalAddr().String() },
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/a/b%20c?x=1&y=2", nil)
	req.Header.Add("Cookie", "a=1; b=2") // split by the client into two crumbs
	req.Header.Add("Cookie", "c=3")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	r := <-reqc
	host := strings.TrimPrefix(url, "https://")
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"Method", r.Method, "GET"},
		{"Proto", r.Proto, "HTTP/2.0"},
		{"ProtoMajor", r.ProtoMajor, 2},
		{"ProtoMinor", r.ProtoMinor, 0},
		{"Host", r.Host, host},
		{"URL.Path", r.URL.Path, "/a/b c"},
		{"URL.RawQuery", r.URL.RawQuery, "x=1&y=2"},
		{"RequestURI", r.RequestURI, "/a/b%20c?x=1&y=2"},
		{"RemoteAddr", r.RemoteAddr, local},
		{"TLS != nil", r.TLS != nil, true},
		{"Cookie", strings.Join(r.Header["Cookie"], "|"), "a=1; b=2; c=3"},
		{"len(Cookies())", len(r.Cookies()), 3},
		{"ContentLength", r.ContentLength, int64(0)},
	} {
		if f.got != f.want {
			t.Errorf("%s = %#v, want %#v", f.name, f.got, f.want)
		}
	}
	if r.TLS != nil && r.TLS.NegotiatedProtocol != "h2" {
		t.Errorf("TLS.NegotiatedProtocol %q", r.TLS.NegotiatedProtocol)
	}
}

// TestHandlerPanic: a handler's panic resets its stream (the client gets
// an error, or a body cut short when part of it had gone) and nothing
// else: the same connection serves the next request. http.ErrAbortHandler
// is the quiet way to do the same.
func TestHandlerPanic(t *testing.T) {
	var conns atomic.Int64
	ts := serve(t, h2.Options{MaxHeaderListSize: 64 << 10,
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context { conns.Add(1); return ctx },
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Has("flush") {
				io.WriteString(w, "partial")
				http.NewResponseController(w).Flush()
			}
			switch r.URL.Path {
			case "/panic":
				panic("boom")
			case "/abort":
				panic(http.ErrAbortHandler)
			}
			io.WriteString(w, "ok")
		})})
	c := client()
	t.Cleanup(c.CloseIdleConnections)
	url := "https://" + ts.addr
	get := func(t *testing.T, path string) ([]byte, error) {
		req, _ := http.NewRequestWithContext(handlerCtx(t), http.MethodGet, url+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}
	for _, path := range []string{"/panic", "/abort", "/panic?flush", "/abort?flush"} {
		t.Run(path, func(t *testing.T) {
			if body, err := get(t, path); err == nil {
				t.Fatalf("no error, body %q", body)
			} else {
				t.Logf("client: %v", err)
			}
			if body, err := get(t, "/ok"); err != nil || string(body) != "ok" {
				t.Fatalf("next request: %q, %v", body, err)
			}
		})
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections, want 1: a panic cost the connection", n)
	}
}

// TestHandlerContextCanceled: a client that cancels its request resets
// the stream, and the handler's r.Context() ends at once.
func TestHandlerContextCanceled(t *testing.T) {
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	url, c := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			ended <- r.Context().Err()
		case <-time.After(3 * time.Second):
			ended <- errors.New("r.Context() not done 3 s after the client canceled")
		}
	})
	ctx, cancel := context.WithCancel(handlerCtx(t))
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/slow", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-started
	start := time.Now()
	cancel()
	err := <-ended
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("handler: %v", err)
	}
	// A bound for "it ends", loose enough for a loaded CI machine.
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("r.Context() done %v after the cancel", d)
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v, want context.Canceled", err)
	}
}

// TestHandlerWriteDeadline: a client that opens no flow-control window
// (SETTINGS_INITIAL_WINDOW_SIZE 0, no WINDOW_UPDATE) would hold a writing
// handler forever; a write deadline set through http.ResponseController
// ends its Write with os.ErrDeadlineExceeded, and the stream is reset.
func TestHandlerWriteDeadline(t *testing.T) {
	type result struct {
		n       int
		err     error
		elapsed time.Duration
	}
	done := make(chan result, 1)
	ts := serve(t, h2.Options{MaxHeaderListSize: 64 << 10, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if err := http.NewResponseController(w).SetWriteDeadline(start.Add(200 * time.Millisecond)); err != nil {
			done <- result{err: fmt.Errorf("SetWriteDeadline: %w", err)}
			return
		}
		n, err := w.Write(make([]byte, 64<<10))
		done <- result{n, err, time.Since(start)}
	})})
	conn, err := tls.Dial("tcp", ts.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "example.test"}, {":path", "/big"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler's Write still blocked 10 s after it started, past its 200 ms deadline")
	}
	if !errors.Is(res.err, os.ErrDeadlineExceeded) || res.n != 0 {
		t.Fatalf("Write: %d, %v; want 0, os.ErrDeadlineExceeded", res.n, res.err)
	}
	if res.elapsed < 150*time.Millisecond {
		t.Fatalf("Write gave up after %v, before its 200 ms deadline", res.elapsed)
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	var data int
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no RST_STREAM for stream 1: %v", err)
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			data += len(f.Data())
		case *http2.RSTStreamFrame:
			if f.StreamID != 1 {
				t.Fatalf("RST_STREAM for stream %d", f.StreamID)
			}
			if data != 0 {
				t.Fatalf("%d bytes of DATA sent into a zero window", data)
			}
			t.Logf("Write: %v after %v; RST_STREAM %v", res.err, res.elapsed.Round(time.Millisecond), f.ErrCode)
			return
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v instead of RST_STREAM", f.ErrCode)
		}
	}
}

// TestHandlerEarlyHints: WriteHeader(103) sends an informational response
// with the fields set so far, before the final one.
func TestHandlerEarlyHints(t *testing.T) {
	const link = "</style.css>; rel=preload; as=style"
	url, c := handlerServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", link)
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "ok")
	})
	var codes []int
	var links []string
	ctx := httptrace.WithClientTrace(handlerCtx(t), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			codes = append(codes, code)
			links = append(links, h.Get("Link"))
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Fatalf("final: %d %q %v", resp.StatusCode, body, err)
	}
	if !slices.Equal(codes, []int{103}) || !slices.Equal(links, []string{link}) {
		t.Fatalf("1xx responses %v with Link %q, want [103] with %q", codes, links, link)
	}
	if resp.Header.Get("Link") != link {
		t.Errorf("final response's Link %q", resp.Header.Get("Link"))
	}
}
