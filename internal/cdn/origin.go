package cdn

import (
	"context"
	"errors"
	"io"
	"time"
)

// Origin is where objects come from on a miss. Implementations must be safe
// for concurrent use; the cache calls Fetch without holding any lock.
type Origin interface {
	// Fetch starts a GET of the object. When req carries validators of a
	// cached copy and the origin says it is unchanged, Fetch returns
	// ErrNotModified; a missing object is ErrNotFound. ctx governs the whole
	// transfer, body reads included. The caller closes Object.Body.
	Fetch(ctx context.Context, req OriginRequest) (*Object, error)
	// Name is a short label for logs and metrics ("s3", "dir").
	Name() string
}

// OriginRequest is one GET to an origin.
type OriginRequest struct {
	Key string // validated with ValidateKey
	// Conditional GET (revalidation of a cached copy).
	IfNoneMatch     string    // an ETag as the origin sent it, quotes included
	IfModifiedSince time.Time // zero: none
	// Offset > 0 asks for the object from that byte on (a resumed or
	// pass-through transfer); Length > 0 also bounds the end. IfMatch, when
	// set, makes the origin refuse (ErrChanged) if the object changed.
	Offset, Length int64
	IfMatch        string
}

// Object is an origin's answer.
type Object struct {
	Body io.ReadCloser
	// Size is the length of the whole object, -1 when the origin did not
	// say; Offset is where Body starts (the start of the range asked for).
	Size, Offset int64
	ETag         string    // as sent, quotes included; "" when none
	LastModified time.Time // zero when unknown
	ContentType  string
	// MD5 is the digest of the whole object when the origin states it
	// (S3's ETag of a single-part upload); the cache checks it. nil: no
	// check beyond the length.
	MD5 []byte
	// FetchedAt is when the copy was taken from the true origin, when
	// that was before this GET (a peer's copy); zero: now.
	FetchedAt time.Time
}

// Origin errors.
var (
	ErrNotFound    = errors.New("cdn: object not found at origin")
	ErrNotModified = errors.New("cdn: object not modified")
	ErrChanged     = errors.New("cdn: object changed at origin during a resumed transfer")
	ErrRange       = errors.New("cdn: range not satisfiable at origin")
)
