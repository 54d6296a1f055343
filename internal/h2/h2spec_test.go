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
	fast := func(_ *h2.FastRequest, a *h2.FastAnswer) bool {
		a.Block = h2.AppendLiteral(a.Block, hpack.HeaderField{Name: "content-type", Value: "text/plain"})
		a.Fields = append(a.Fields, hpack.HeaderField{Name: "content-length", Value: "9000"})
		a.Body = page
		return true
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

// TestAppendLiteral: the fields a fast answer's block carries decode, with
// a real HPACK decoder, to what went in (short and long, Huffman-friendly
// or not), and leave the decoder's dynamic table empty.
func TestAppendLiteral(t *testing.T) {
	in := []hpack.HeaderField{
		{Name: "content-type", Value: "image/png"},
		{Name: "etag", Value: `"0123456789abcdef"`},
		{Name: "x-long", Value: strings.Repeat("v", 300)},
		{Name: "x-binaryish", Value: "\x7e\x7f~|{}^`"},
		{Name: "x-empty", Value: ""},
	}
	var block []byte
	for _, f := range in {
		block = h2.AppendLiteral(block, f)
	}
	var got []hpack.HeaderField
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { got = append(got, f) })
	if _, err := dec.Write(block); err != nil {
		t.Fatal(err)
	}
	if err := dec.Close(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(in) {
		t.Fatalf("%d fields, want %d", len(got), len(in))
	}
	for i := range in {
		if got[i].Name != in[i].Name || got[i].Value != in[i].Value {
			t.Fatalf("field %d: %q, want %q", i, got[i], in[i])
		}
	}
	// Nothing was added to the table: a fresh decoder's first field at
	// dynamic index 62 does not exist.
	if _, err := dec.Write([]byte{0x80 | 62}); err == nil {
		t.Fatal("the block added to the dynamic table")
	}
}
