package main

import (
	"net/http"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

// The embedded node answers its dynamic name with itself, over UDP and TCP,
// and refuses names outside its zones: the issue 4 "done when" in a test.
func TestEmbeddedNodeDNS(t *testing.T) {
	cfg, p := nodeConfig(t, "")
	startNode(t, cfg, p)
	for _, netw := range []string{"udp", "tcp"} {
		c := &mdns.Client{Net: netw}
		q := new(mdns.Msg)
		q.SetQuestion("widget.edgenode.test.", mdns.TypeA)
		r, _, err := c.Exchange(q, p.dns)
		if err != nil {
			t.Fatalf("%s: %v", netw, err)
		}
		if !r.Authoritative || r.RecursionAvailable || r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("%s: %v", netw, r)
		}
		if a, ok := r.Answer[0].(*mdns.A); !ok || a.A.String() != "127.0.0.1" {
			t.Errorf("%s: answer %v", netw, r.Answer[0])
		}
		q.SetQuestion("example.com.", mdns.TypeA)
		r, _, err = c.Exchange(q, p.dns)
		if err != nil || r.Rcode != mdns.RcodeRefused {
			t.Errorf("%s: outside the zones: %v %v", netw, r, err)
		}
		q.SetQuestion("test-node.nodes.edgenode.test.", mdns.TypeA)
		r, _, err = c.Exchange(q, p.dns)
		if err != nil || len(r.Answer) != 1 {
			t.Errorf("%s: per-node name: %v %v", netw, r, err)
		}
	}
	_, body := get(t, http.DefaultClient, "http://"+p.admin+"/status.json")
	if !strings.Contains(body, `"id": "test-node"`) || !strings.Contains(body, `"state": "alive"`) ||
		!strings.Contains(body, `"verified": true`) {
		t.Errorf("status.json: %s", body)
	}
}
