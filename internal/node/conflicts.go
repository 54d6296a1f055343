package node

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/edgenode/edgenode/internal/replica"
)

// The conflicts API on the admin listener (bearer token, like every /v1/
// route): the unique-key collisions this node parked in
// edgenode_meta.conflicts, and their resolution, which replicates (see
// package replica, conflicts.go). `edgenode conflicts` is its client.
//
//	GET  /v1/conflicts                         every parked op here, oldest first
//	GET  /v1/conflicts/{id}                    one, with this node's copy and what it collides with
//	POST /v1/conflicts/{id}/resolve?keep=KEEP  KEEP: stored or parked
func (p *mongoPart) routeConflicts(handle func(pattern string, h http.Handler)) {
	handle("GET /v1/conflicts", http.HandlerFunc(p.listConflicts))
	handle("GET /v1/conflicts/{id}", http.HandlerFunc(p.showConflict))
	handle("POST /v1/conflicts/{id}/resolve", http.HandlerFunc(p.resolveConflict))
}

// core is the running replica core, or an answer saying why there is none.
func (p *mongoPart) core(w http.ResponseWriter) *replica.Replica {
	if px := p.up.Load(); px != nil {
		if r := px.Replica(); r != nil {
			return r
		}
	}
	writeJSONError(w, http.StatusServiceUnavailable, "the Mongo layer is not running on this node")
	return nil
}

func (p *mongoPart) listConflicts(w http.ResponseWriter, r *http.Request) {
	core := p.core(w)
	if core == nil {
		return
	}
	cs, err := core.Conflicts(r.Context())
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"conflicts": cs})
}

func (p *mongoPart) showConflict(w http.ResponseWriter, r *http.Request) {
	core := p.core(w)
	if core == nil {
		return
	}
	c, err := core.Conflict(r.Context(), r.PathValue("id"))
	if err != nil {
		writeJSONError(w, conflictStatus(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (p *mongoPart) resolveConflict(w http.ResponseWriter, r *http.Request) {
	keep, err := replica.ParseKeep(r.URL.Query().Get("keep"))
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, err.Error())
		return
	}
	core := p.core(w)
	if core == nil {
		return
	}
	c, err := core.Resolve(r.Context(), r.PathValue("id"), keep)
	if err != nil {
		writeJSONError(w, conflictStatus(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"resolved": c, "kept": keep.String()})
}

func conflictStatus(err error) int {
	var blocked *replica.BlockedError
	switch {
	case errors.Is(err, replica.ErrNoConflict):
		return http.StatusNotFound
	case errors.As(err, &blocked):
		return http.StatusServiceUnavailable
	}
	return http.StatusConflict
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeJSONError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
