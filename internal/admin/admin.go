// Package admin is the operators' listener: health, readiness, metrics,
// profiling, and the routes other parts add (status, publish API). It is
// plain HTTP and belongs on loopback or a private network.
package admin

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the admin listener.
type Server struct {
	ln    net.Listener
	mux   *http.ServeMux
	srv   *http.Server
	ready atomic.Bool
	token string

	checksMu sync.Mutex
	checks   []readyCheck
}

// readyCheck is a part's own condition for readiness (e.g. a replica that
// lags too far behind): /readyz is 503 while it returns an error.
type readyCheck struct {
	name string
	fn   func() error
}

// New builds the admin server on a bound listener. gatherer is the node's
// metrics registry. token guards the /v1/ routes and /debug/pprof/; it must
// not be empty: an admin listener never fails open.
func New(ln net.Listener, gatherer prometheus.Gatherer, token string, log *slog.Logger) (*Server, error) {
	if strings.TrimSpace(token) == "" {
		return nil, errors.New("admin: the bearer token is empty (admin.token, or the publish.secret file in the data folder)")
	}
	s := &Server{ln: ln, mux: http.NewServeMux(), token: token}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.Readiness(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	// Profiles show memory contents (heap, goroutine stacks with arguments,
	// the command line) and a CPU profile costs the node CPU: they need the
	// same bearer token as the /v1/ routes, wherever the listener is.
	s.mux.Handle("/debug/pprof/", s.requireToken(http.HandlerFunc(pprof.Index)))
	s.mux.Handle("/debug/pprof/cmdline", s.requireToken(http.HandlerFunc(pprof.Cmdline)))
	s.mux.Handle("/debug/pprof/profile", s.requireToken(http.HandlerFunc(pprof.Profile)))
	s.mux.Handle("/debug/pprof/symbol", s.requireToken(http.HandlerFunc(pprof.Symbol)))
	s.mux.Handle("/debug/pprof/trace", s.requireToken(http.HandlerFunc(pprof.Trace)))
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Handle adds a route. Routes under /v1/ require the admin token.
func (s *Server) Handle(pattern string, h http.Handler) {
	_, path, _ := strings.Cut(pattern, " ")
	if path == "" {
		path = pattern
	}
	if strings.HasPrefix(path, "/v1/") {
		h = s.requireToken(h)
	}
	s.mux.Handle(pattern, h)
}

func (s *Server) requireToken(h http.Handler) http.Handler {
	want := []byte("Bearer " + s.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="edgenode admin"`)
			http.Error(w, "missing or wrong admin token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// AddCheck adds a condition /readyz also requires once the node is ready.
func (s *Server) AddCheck(name string, fn func() error) {
	s.checksMu.Lock()
	s.checks = append(s.checks, readyCheck{name, fn})
	s.checksMu.Unlock()
}

func (s *Server) failingCheck() error {
	s.checksMu.Lock()
	checks := s.checks
	s.checksMu.Unlock()
	for _, c := range checks {
		if err := c.fn(); err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return nil
}

// errNotReady is /readyz's answer before SetReady(true) and after
// SetReady(false).
var errNotReady = errors.New("not ready")

// Readiness is nil when /readyz answers 200, else what it says.
func (s *Server) Readiness() error {
	if !s.ready.Load() {
		return errNotReady
	}
	if err := s.failingCheck(); err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	return nil
}

// SetReady flips /readyz.
func (s *Server) SetReady(ok bool) { s.ready.Store(ok) }

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the listener gracefully.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }
