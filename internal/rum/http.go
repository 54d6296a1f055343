package rum

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/edgenode/edgenode/internal/mesh/pki"
)

// Paths served by every node's HTTPS listener.
const (
	RTTPath     = "/.well-known/edgenode/rtt"
	BeaconPath  = "/.well-known/edgenode/beacon"
	TargetsPath = "/.well-known/edgenode/rtt-targets"
	// ScriptPath serves rtt.js, the measuring script: the demo widget
	// loads it, and any page (or the JS SDK) can with one script tag.
	ScriptPath = "/.well-known/edgenode/rtt.js"
)

//go:embed assets/rtt.js
var script []byte

// ScriptHandler serves the measuring script.
func ScriptHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Header().Set("Cache-Control", "public, max-age=3600")
		w.Header().Set("Access-Control-Allow-Origin", "*")
		_, _ = w.Write(script)
	})
}

// Beacon limits: a beacon is a JSON object of at most MaxBeaconEntries
// node ids, each mapped to a round trip in milliseconds (0 < ms <= MaxMS),
// in at most MaxBeaconBytes.
const (
	MaxBeaconBytes   = 512
	MaxBeaconEntries = 4
)

// ParseBeacon reads a beacon body: {"node-id": ms, ...}. Anything else (a
// duplicate id, an id that is not a node id, a value that is not a number
// of milliseconds within range, trailing data) is an error. It never
// allocates more than the body's size bounds.
func ParseBeacon(b []byte) ([]Sample, error) {
	if len(b) > MaxBeaconBytes {
		return nil, fmt.Errorf("beacon larger than %d bytes", MaxBeaconBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, errors.New("beacon: want a JSON object of node id to milliseconds")
	}
	var out []Sample
	for dec.More() {
		if len(out) == MaxBeaconEntries {
			return nil, fmt.Errorf("beacon: more than %d entries", MaxBeaconEntries)
		}
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("beacon: %w", err)
		}
		id, _ := tok.(string) // object keys are always strings
		if err := pki.ValidNodeID(id); err != nil {
			return nil, fmt.Errorf("beacon: %w", err)
		}
		for _, s := range out {
			if s.Node == id {
				return nil, fmt.Errorf("beacon: node %q twice", id)
			}
		}
		tok, err = dec.Token()
		if err != nil {
			return nil, fmt.Errorf("beacon: %w", err)
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, fmt.Errorf("beacon: value of %q is not a number", id)
		}
		ms, err := strconv.ParseFloat(string(num), 64)
		if err != nil || math.IsNaN(ms) || ms <= 0 || ms > MaxMS {
			return nil, fmt.Errorf("beacon: %q: %s is not a round trip in ms within (0, %d]", id, num, MaxMS)
		}
		out = append(out, Sample{Node: id, MS: ms})
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, errors.New("beacon: unterminated object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("beacon: trailing data after the object")
	}
	if len(out) == 0 {
		return nil, errors.New("beacon: no entries")
	}
	return out, nil
}

// publicHeaders are set on every answer of these routes: no caching (a
// cached answer times nothing), open to every origin (the widget runs on
// the customers' pages), timings readable (Resource Timing). No cookie is
// ever set or read.
func publicHeaders(h http.Header) {
	h.Set("Cache-Control", "no-store")
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Timing-Allow-Origin", "*")
}

// RTTHandler answers the widget's timed fetch: 204 and nothing else.
func RTTHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		publicHeaders(w.Header())
		w.WriteHeader(http.StatusNoContent)
	})
}

// BeaconHandler takes the widget's beacons. known says whether a node id
// is in the node map; samples for other ids are dropped (a beacon cannot
// make the table keep figures for nodes that do not exist). The client
// network is the connection's address: these routes are on the node's own
// TLS listener, where RemoteAddr is the client.
func (t *Table) BeaconHandler(known func(id string) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		publicHeaders(w.Header())
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBeaconBytes))
		if err != nil {
			t.met.beacons.WithLabelValues("too_large").Inc()
			http.Error(w, fmt.Sprintf("beacon larger than %d bytes", MaxBeaconBytes), http.StatusRequestEntityTooLarge)
			return
		}
		samples, err := ParseBeacon(body)
		if err != nil {
			t.met.beacons.WithLabelValues("malformed").Inc()
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		kept := samples[:0]
		for _, s := range samples {
			if known(s.Node) {
				kept = append(kept, s)
			}
		}
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil || len(kept) == 0 {
			t.met.beacons.WithLabelValues("unknown_nodes").Inc()
			w.WriteHeader(http.StatusNoContent) // nothing the browser can do about it
			return
		}
		t.Record(ap.Addr(), kept)
		t.met.beacons.WithLabelValues("ok").Inc()
		w.WriteHeader(http.StatusNoContent)
	})
}

// Target is a node the widget may time.
type Target struct {
	ID  string `json:"id"`
	URL string `json:"url"` // RTTPath on that node
}

// Targets is what the widget fetches first: this node's id, how many page
// loads measure, and the nodes it may time.
type Targets struct {
	Self       string   `json:"self"`
	SampleRate float64  `json:"sample_rate"`
	Targets    []Target `json:"targets"`
}

// TargetsHandler serves the widget's list of targets, made by list at
// each request (from the current node map).
func TargetsHandler(list func() Targets) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		publicHeaders(w.Header())
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(list())
	})
}
