// Package web serves the node's built-in pages. Assets are embedded so the
// binary is the whole product.
//
// Landing is the page at / when no app server is configured. Status is the
// operators' page on the admin listener: GET /status is one self-contained
// HTML response (inline SVG world map, CSS and script; no other host is ever
// asked for anything) and GET /status/events streams snapshots of the node
// map and every node's Figures as Server-Sent Events. Each node computes its
// own Figures from its metrics registry and shares them with its peers on
// the mesh topic StatusTopic, so any node's page shows the whole cluster.
// The demo comment app and its widget are in package demo.
package web

import (
	"embed"
	"html/template"
	"net/http"
	"sort"
)

//go:embed assets
var assets embed.FS

var landingTmpl = template.Must(template.ParseFS(assets, "assets/landing.html"))

// Part is one running part of the node, as the landing page lists it.
type Part struct {
	Name   string // e.g. "dns"
	Detail string // e.g. "udp+tcp 127.0.0.1:8053"
}

// Landing serves the page shown at / when no app server is configured: it
// says what this node is and which parts run. parts is called per request so
// the page is always current.
func Landing(nodeID, version string, parts func() []Part) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		ps := parts()
		sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_ = landingTmpl.Execute(w, struct {
			Node, Version, Proto string
			Parts                []Part
		}{nodeID, version, r.Proto, ps})
	})
}
