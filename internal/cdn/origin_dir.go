package cdn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path"
	"strconv"
	"syscall"
	"time"
)

// DirOrigin serves objects from a local folder: the key "a/b.png" is the
// file a/b.png under it. It is the embedded default (./data/origin) and a
// stand-in for S3 on a single machine. Lookups go through an os.Root, so no
// key or symlink reaches outside the folder.
type DirOrigin struct {
	dir  string
	root *os.Root
}

// NewDirOrigin opens (creating it when missing) the folder dir.
func NewDirOrigin(dir string) (*DirOrigin, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cdn: dir origin: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("cdn: dir origin: %w", err)
	}
	return &DirOrigin{dir: dir, root: root}, nil
}

// Name implements Origin.
func (o *DirOrigin) Name() string { return "dir" }

// Close releases the folder.
func (o *DirOrigin) Close() error { return o.root.Close() }

// Fetch implements Origin. The ETag is derived from size and modification
// time (as nginx does), so replacing a file changes it.
func (o *DirOrigin) Fetch(ctx context.Context, req OriginRequest) (*Object, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := ValidateKey(req.Key); err != nil {
		return nil, fmt.Errorf("cdn: dir origin: %w", err)
	}
	f, err := o.root.Open(req.Key)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrInvalid) || isNotDir(err) || escapesRoot(err) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("cdn: dir origin: open %q: %w", req.Key, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cdn: dir origin: stat %q: %w", req.Key, err)
	}
	if !st.Mode().IsRegular() {
		return nil, ErrNotFound
	}
	size, mtime := st.Size(), st.ModTime()
	etag := `"` + strconv.FormatInt(size, 16) + "-" + strconv.FormatInt(mtime.UnixNano(), 16) + `"`
	if req.IfMatch != "" && req.IfMatch != etag {
		return nil, ErrChanged
	}
	if req.IfNoneMatch != "" && req.IfNoneMatch == etag {
		return nil, ErrNotModified
	}
	if req.IfNoneMatch == "" && !req.IfModifiedSince.IsZero() && !mtime.Truncate(time.Second).After(req.IfModifiedSince) {
		return nil, ErrNotModified
	}
	ctype := mime.TypeByExtension(path.Ext(req.Key))
	if ctype == "" {
		var head [512]byte
		n, _ := io.ReadFull(f, head[:])
		ctype = http.DetectContentType(head[:n])
	}
	if req.Offset < 0 || req.Offset >= size && req.Offset > 0 {
		return nil, ErrRange
	}
	if _, err := f.Seek(req.Offset, io.SeekStart); err != nil {
		return nil, fmt.Errorf("cdn: dir origin: seek %q: %w", req.Key, err)
	}
	var body io.ReadCloser = f
	if req.Length > 0 && req.Offset+req.Length < size {
		body = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(f, req.Length), f}
	}
	ok = true
	return &Object{Body: body, Size: size, Offset: req.Offset, ETag: etag, LastModified: mtime, ContentType: ctype}, nil
}

// isNotDir reports "a path segment is a file" (ENOTDIR), which for a key
// means the object does not exist.
func isNotDir(err error) bool {
	return errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.ELOOP)
}

// escapesRoot recognises os.Root's refusal of a path (a symlink) that leads
// outside the folder; the os package exports no sentinel for it.
func escapesRoot(err error) bool {
	var pe *fs.PathError
	return errors.As(err, &pe) && pe.Err != nil && pe.Err.Error() == "path escapes from parent"
}
