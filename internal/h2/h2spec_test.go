package h2_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/edgenode/edgenode/internal/h2"
	"github.com/edgenode/edgenode/internal/testkit"
	"golang.org/x/net/http2/hpack"
)

// TestH2Spec runs h2spec, the HTTP/2 conformance suite (a real client that
// sends every malformed and edge-case frame sequence RFC 7540/9113 and
// RFC 7541 speak of), against the server: once with every request going
// to the handler, once with the fast answer taking the GETs.
func TestH2Spec(t *testing.T) {
	bin, err := testkit.Tool("h2spec", nil)
	if err != nil {
		t.Fatal(err)
	}
	page := bytes.Repeat([]byte("edgenode "), 1000)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		w.Write(page)
	})
	fast := func(_ *h2.FastRequest, hdr []hpack.HeaderField) ([]hpack.HeaderField, []byte, bool) {
		hdr = append(hdr, hpack.HeaderField{Name: "content-type", Value: "text/plain"},
			hpack.HeaderField{Name: "content-length", Value: "9000"})
		return hdr, page, true
	}
	for _, tc := range []struct {
		name string
		fast h2.FastFunc
	}{{"handler", nil}, {"fast", fast}} {
		t.Run(tc.name, func(t *testing.T) {
			ts := serve(t, h2.Options{Handler: handler, Fast: tc.fast, MaxHeaderListSize: 16 << 10})
			host, port, _ := net.SplitHostPort(ts.addr)
			out, err := exec.Command(bin, "-h", host, "-p", port, "-t", "-k", "-o", "3").CombinedOutput()
			if err != nil {
				t.Fatalf("h2spec: %v\n%s", err, failures(string(out)))
			}
			t.Logf("%s", lastLines(string(out), 2))
		})
	}
}

// failures is h2spec's report from its "Failures:" section on.
func failures(out string) string {
	if i := strings.Index(out, "Failures:"); i >= 0 {
		return out[i:]
	}
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
