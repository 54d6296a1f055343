package main

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/quic-go/quic-go/http3"
)

// The embedded node answers HTTP/3 like HTTP/2 and advertises it on TCP:
// the issue 9 "done when" against the real binary.
func TestEmbeddedNodeHTTP3(t *testing.T) {
	cfg, p := nodeConfig(t, "")
	startNode(t, cfg, p)
	url := "https://" + p.https + "/"
	resp2, body2 := get(t, httpsClient(true), url)
	_, port, _ := net.SplitHostPort(p.https)
	if got := resp2.Header.Get("Alt-Svc"); !strings.Contains(got, `h3=":`+port+`"`) {
		t.Errorf("Alt-Svc on h2: %q", got)
	}
	tr := &http3.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.Close()
	resp3, err := (&http.Client{Transport: tr}).Get(url)
	if err != nil {
		t.Fatalf("h3: %v", err)
	}
	body3, _ := io.ReadAll(resp3.Body)
	resp3.Body.Close()
	if resp3.ProtoMajor != 3 || resp3.StatusCode != 200 {
		t.Fatalf("h3: %s %d", resp3.Proto, resp3.StatusCode)
	}
	// The landing page names the protocol it was served over; apart from
	// that the answers are the same.
	norm := func(s string) string {
		return strings.NewReplacer("HTTP/2.0", "HTTPX", "HTTP/3.0", "HTTPX").Replace(s)
	}
	if norm(string(body3)) != norm(body2) {
		t.Errorf("h3 answer differs from h2:\n%s\n---\n%s", body3, body2)
	}
}
