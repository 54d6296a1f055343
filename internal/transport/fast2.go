package transport

import (
	"time"

	"github.com/edgenode/edgenode/internal/h2"
	"golang.org/x/net/http2/hpack"
)

// answerH2 is the HTTP/2 server's fast answer (h2.Options.Fast): the
// HTTP/1.1 fast path's rules for which requests it may answer, and the
// same answer, from the route's FastHandler.
func (s *Server) answerH2(req *h2.FastRequest, a *h2.FastAnswer) bool {
	start := time.Now()
	if req.Authority == "" || !cleanPath(req.Path) || !fastFields(req.Fields) {
		return false
	}
	route := s.fastRouteFor(req.Method, req.Authority, req.Path)
	if route == nil {
		return false
	}
	block, body, ok := route.h.AppendFastBlock(a.Block, req.Method, req.Path)
	if !ok {
		return false
	}
	a.Block, a.Body = block, body
	if s.h3 != nil {
		if v := s.h3.altSvcValue(); v != "" {
			a.Fields = append(a.Fields, hpack.HeaderField{Name: "alt-svc", Value: v})
		}
	}
	a.Fields = append(a.Fields, hpack.HeaderField{Name: "date", Value: s.date.get(start)[0]})
	route.answered(s.metrics, "2", req.Method, start)
	return true
}

// fastFields reports whether a request's fields leave its answer as the
// fast path gives it (HTTP/2 has no Upgrade, Connection or
// Transfer-Encoding, and the request has no body).
func fastFields(fields []hpack.HeaderField) bool {
	for _, f := range fields {
		if changesAnswer(f.Name) {
			return false
		}
	}
	return true
}
