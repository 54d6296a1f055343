package transport

import (
	"hash/maphash"
	"net/http"
	"net/url"
	"sync/atomic"
)

// routeCache remembers which fast route (or none) ServeMux picks for a
// method, host and path, for the fast paths: ServeMux's lookup was 6–7% of
// a 10 KiB hit's CPU on either protocol (docs/https-edge-profile.md).
// Routes are fixed before Serve, so an answer never goes stale. It is a
// fixed table of slots, each replaced by the last lookup that hashed to
// it: bounded memory whatever paths clients send, no lock, and a miss only
// costs the lookup it would have cost anyway.
type routeCache struct {
	seed  maphash.Seed
	slots [routeSlots]atomic.Pointer[routeEntry]
}

const (
	routeSlots = 1024
	// routeKeyMax bounds what one slot holds: longer hosts and paths are
	// looked up every time.
	routeKeyMax = 256
)

type routeEntry struct {
	method, host, path string
	route              *fastRoute // nil: not a fast route
}

func newRouteCache() *routeCache { return &routeCache{seed: maphash.MakeSeed()} }

// fastRouteFor is the fast route ServeMux picks for a GET or HEAD of
// host and path, or nil.
func (s *Server) fastRouteFor(method, host, path string) *fastRoute {
	rc := s.routes
	if len(host)+len(path) > routeKeyMax {
		return s.muxFastRoute(method, host, path)
	}
	var h maphash.Hash
	h.SetSeed(rc.seed)
	h.WriteString(method)
	h.WriteByte(0)
	h.WriteString(host)
	h.WriteByte(0)
	h.WriteString(path)
	slot := &rc.slots[h.Sum64()%routeSlots]
	if e := slot.Load(); e != nil && e.path == path && e.host == host && e.method == method {
		return e.route
	}
	route := s.muxFastRoute(method, host, path)
	slot.Store(&routeEntry{method: method, host: host, path: path, route: route})
	return route
}

// muxFastRoute asks ServeMux.
func (s *Server) muxFastRoute(method, host, path string) *fastRoute {
	r := http.Request{Method: method, Host: host, URL: &url.URL{Path: path}}
	_, pattern := s.mux.Handler(&r)
	return s.fast[pattern]
}
