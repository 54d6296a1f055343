package transport

import (
	"bufio"
	"bytes"
	"net/http"
	"net/url"
	"path"
	"strings"
	"testing"
)

// FuzzParseFastHead plays the attacker against the fast path's parser with
// net/http's as the judge: whatever bytes come in, a head the fast path
// accepts must be one net/http reads the same way (method, path, host, no
// body) and ends at the same byte, so the two can never disagree on where
// the next request starts (request smuggling), and must carry none of the
// fields the fast path ignores. Declining is always safe.
func FuzzParseFastHead(f *testing.F) {
	for _, s := range []string{
		"GET /media/demo/10k.bin HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n",
		"HEAD /media/a HTTP/1.1\r\nHost: example.test\r\nUser-Agent: x\r\nConnection: keep-alive\r\n\r\nGET /media/b HTTP/1.1\r\n",
		"GET /media/a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /x",
		"GET /media/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET /media/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET /media/a HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
		"GET /media/a HTTP/1.1\nHost: a\n\n",
		"GET /media/%2e%2e/a HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /media/../a HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /media//a HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /media/a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET http://a/media/a HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /media/a HTTP/1.0\r\nHost: a\r\n\r\n",
		"GET /media/a HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\n\r\n",
		"GET /media/a HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\n\r\n",
		"GET /media/a HTTP/1.1\r\nHost : a\r\n\r\n",
		"GET /media/a HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
		"GET /media/a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
		"GET /media/a HTTP/1.1\r\nHost: [::1]:443\r\nAccept: */*\r\n\r\n",
		"GET /media/a\r HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET  /media/a HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /media/. HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /media/... HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fh, res := parseFastHead(b)
		if res != headOK {
			return
		}
		br := bufio.NewReaderSize(bytes.NewReader(b), len(b)+16)
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("fast path accepts what net/http refuses (%v): %q", err, b)
		}
		if consumed := len(b) - br.Buffered(); consumed != fh.n {
			t.Fatalf("head ends at %d for the fast path, %d for net/http: %q", fh.n, consumed, b)
		}
		if req.Method != string(fh.method) || req.Host != string(fh.host) || req.Proto != "HTTP/1.1" {
			t.Fatalf("read differently: %s %s %s vs %s %s: %q", req.Method, req.Host, req.Proto, fh.method, fh.host, b)
		}
		p := string(fh.path)
		if req.URL.Path != p || req.URL.RawQuery != "" || req.URL.RawPath != "" || req.RequestURI != p {
			t.Fatalf("path %q read as %q (raw %q, query %q): %q", p, req.URL.Path, req.URL.RawPath, req.URL.RawQuery, b)
		}
		if u, err := url.PathUnescape(p); err != nil || u != p {
			t.Fatalf("path %q is not its own unescaped form", p)
		}
		if c := path.Clean(p); c != p && c+"/" != p {
			t.Fatalf("path %q is not clean (%q): ServeMux would redirect it", p, c)
		}
		if req.ContentLength != 0 || len(req.TransferEncoding) != 0 || req.Close {
			t.Fatalf("accepted a request with a body or Connection: close: %q", b)
		}
		for name := range req.Header {
			switch n := strings.ToLower(name); {
			case n == "range", strings.HasPrefix(n, "if-"), n == "expect", n == "upgrade", n == "content-length", n == "transfer-encoding":
				t.Fatalf("accepted a request with %s: %q", name, b)
			}
		}
	})
}

func TestParseFastHeadDeclines(t *testing.T) {
	ok := "GET /media/a HTTP/1.1\r\nHost: a\r\n\r\n"
	if _, res := parseFastHead([]byte(ok)); res != headOK {
		t.Fatalf("plain GET: %v", res)
	}
	if _, res := parseFastHead([]byte(ok[:20])); res != headMore {
		t.Fatalf("partial head: %v, want more", res)
	}
	for _, s := range []string{
		"POST /media/a HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /media/a HTTP/1.1\r\n\r\n", // no Host
		"GET /media/a HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"GET /media/a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
		"GET /media/a HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: x\r\n\r\n",
		"GET /media/a%20b HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /media/a HTTP/1.1\nHost: a\n\n", // bare LF: a complete head for net/http
	} {
		if _, res := parseFastHead([]byte(s)); res != headDecline {
			t.Errorf("%q: %v, want decline", s, res)
		}
	}
}
