package pubsub

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
)

// AdminRoutes are the app server's routes, for the admin listener (which
// adds the bearer-token check to /v1/ routes itself).
func (p *PubSub) AdminRoutes() map[string]http.Handler {
	return map[string]http.Handler{
		"POST /v1/publish":                   http.HandlerFunc(p.servePublish),
		"GET /v1/presence/{tenant}/{thread}": http.HandlerFunc(p.servePresence),
	}
}

type publishRequest struct {
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

type publishReply struct {
	Channel  string   `json:"channel"`
	Position Position `json:"position"`
}

type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// servePublish: POST /v1/publish {"channel":"demo/thread-1","data":{...}}
// -> 200 {"channel":...,"position":{"epoch":...,"offset":...}}
func (p *PubSub) servePublish(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(p.o().MaxMessageBytes)+4096))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeJSON(w, http.StatusRequestEntityTooLarge, apiError{ErrTooLarge.Error()})
			return
		}
		writeJSON(w, http.StatusBadRequest, apiError{"reading body: " + err.Error()})
		return
	}
	var req publishRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{`body must be {"channel":"{tenant}/{thread}","data":<JSON>}`})
		return
	}
	if len(req.Data) == 0 {
		writeJSON(w, http.StatusBadRequest, apiError{ErrBadData.Error()})
		return
	}
	pos, err := p.Publish(req.Channel, req.Data)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, publishReply{Channel: req.Channel, Position: pos})
	case errors.Is(err, ErrUnknownTenant):
		writeJSON(w, http.StatusNotFound, apiError{err.Error()})
	case errors.Is(err, ErrTooLarge):
		writeJSON(w, http.StatusRequestEntityTooLarge, apiError{err.Error()})
	case errors.Is(err, ErrClosed):
		writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
	default:
		writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
	}
}

type presenceReply struct {
	Channel string `json:"channel"`
	Local   int    `json:"local"`   // subscriptions on this node
	Cluster int    `json:"cluster"` // on every node, as last reported by peers
}

// servePresence: GET /v1/presence/{tenant}/{thread} -> {"channel","local","cluster"}
func (p *PubSub) servePresence(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("tenant") + "/" + r.PathValue("thread")
	tn, _, ok := splitChannel(name)
	if !ok {
		writeJSON(w, http.StatusBadRequest, apiError{ErrBadChannel.Error()})
		return
	}
	if p.tenant(tn) == nil {
		writeJSON(w, http.StatusNotFound, apiError{ErrUnknownTenant.Error()})
		return
	}
	local, cluster := p.Presence(name)
	writeJSON(w, http.StatusOK, presenceReply{Channel: name, Local: local, Cluster: cluster})
}
