package cdn

import (
	"bufio"
	"cmp"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// On-disk layout, under Options.Dir:
//
//	v1/objects/ab/<sha256(key)>.<gen>.data   the object's bytes
//	v1/objects/ab/<sha256(key)>.<gen>.meta   JSON objMeta, written after the data
//	v1/tmp/                                  downloads in progress (emptied at start)
//	v1/lru.order                             recency at the last clean Close
//
// gen is a 16-hex-digit counter, new for every version written, so a path is
// never reused: deleting an evicted version can never hit a newer copy of
// the same key, and no lock is needed around file deletion. An entry exists
// iff its .meta exists and names a .data of the stated size; anything else
// found at start is removed.
type store struct {
	objDir, tmpDir, orderPath string
	gen                       atomic.Uint64
}

// objMeta is the .meta file.
type objMeta struct {
	Key          string    `json:"key"`
	Gen          uint64    `json:"gen"`
	Size         int64     `json:"size"`
	ETag         string    `json:"etag,omitempty"` // the origin's, "" when it sent none
	LastModified time.Time `json:"lastModified"`
	ContentType  string    `json:"contentType,omitempty"`
	MD5          string    `json:"md5"` // hex digest of the bytes on disk
	FetchedAt    time.Time `json:"fetchedAt"`
	ValidatedAt  time.Time `json:"validatedAt"`
}

type rebuildStats struct{ temp, broken int }

func openStore(dir string) (*store, error) {
	base := filepath.Join(dir, "v1")
	s := &store{
		objDir:    filepath.Join(base, "objects"),
		tmpDir:    filepath.Join(base, "tmp"),
		orderPath: filepath.Join(base, "lru.order"),
	}
	for _, d := range []string{s.objDir, s.tmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("cdn: cache dir: %w", err)
		}
	}
	return s, nil
}

func (s *store) paths(hash string, gen uint64) (data, meta string) {
	base := filepath.Join(s.objDir, hash[:2], hash+"."+fmt.Sprintf("%016x", gen))
	return base + ".data", base + ".meta"
}

// createTemp makes the file a fill downloads into.
func (s *store) createTemp() (*os.File, error) {
	return os.CreateTemp(s.tmpDir, "fill-*")
}

// place moves a verified download to its final name (no fsync yet: the
// entry is served from the open file at once, and it only counts on disk
// once persist wrote its .meta). tmp stays open: readers use it.
func (s *store) place(tmp *os.File, m *objMeta) (dataPath, metaPath string, err error) {
	dataPath, metaPath = s.paths(keyHash(m.Key), m.Gen)
	if err := os.MkdirAll(filepath.Dir(dataPath), 0o755); err != nil {
		return "", "", err
	}
	if err := os.Rename(tmp.Name(), dataPath); err != nil {
		return "", "", err
	}
	return dataPath, metaPath, nil
}

// persist makes a placed entry durable: fsync the data, then write the
// .meta (itself fsync'd and renamed), then fsync the folder. A crash before
// the .meta is in place leaves an orphan .data, removed at the next start;
// a .meta never names bytes that are not on disk.
func (s *store) persist(data *os.File, metaPath string, m *objMeta) error {
	if err := data.Sync(); err != nil {
		return fmt.Errorf("fsync data: %w", err)
	}
	if err := s.writeMeta(metaPath, m); err != nil {
		return err
	}
	return syncDir(filepath.Dir(metaPath))
}

// writeMeta writes a .meta atomically (temp, fsync, rename).
func (s *store) writeMeta(path string, m *objMeta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.tmpDir, "meta-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write meta: %w", err)
	}
	return nil
}

// touch records a successful revalidation in the entry's .meta, so a
// restart does not revalidate again at once. Best effort: if the entry was
// evicted meanwhile, the rewritten .meta is an orphan that the next start
// removes.
func (s *store) touch(e *entry, validatedAt time.Time) error {
	m := e.meta()
	m.ValidatedAt = validatedAt
	_, metaPath := s.paths(e.hash, e.gen)
	if _, err := os.Stat(metaPath); err != nil {
		return nil // evicted or purged meanwhile
	}
	return s.writeMeta(metaPath, &m)
}

func (s *store) remove(e *entry) error {
	dataPath, metaPath := s.paths(e.hash, e.gen)
	// The .meta first: an entry without it is not an entry, so a crash in
	// between leaves an orphan .data that the next start removes.
	err1 := os.Remove(metaPath)
	err2 := os.Remove(dataPath)
	if errors.Is(err1, fs.ErrNotExist) {
		err1 = nil
	}
	if errors.Is(err2, fs.ErrNotExist) {
		err2 = nil
	}
	return errors.Join(err1, err2)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync dir: %w", err)
	}
	return nil
}

// rebuild scans the folder and returns the valid entries, least recently
// used first: in the order recorded at the last clean Close when there is
// one, otherwise by last validation time.
func (s *store) rebuild() ([]*entry, rebuildStats, error) {
	var st rebuildStats
	tmps, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return nil, st, fmt.Errorf("cdn: rebuild: %w", err)
	}
	for _, t := range tmps {
		if err := os.RemoveAll(filepath.Join(s.tmpDir, t.Name())); err != nil {
			return nil, st, fmt.Errorf("cdn: rebuild: remove temp file: %w", err)
		}
		st.temp++
	}

	type version struct {
		gen        uint64
		data, meta bool
	}
	byHash := map[string][]*version{}
	var maxGen uint64
	shards, err := os.ReadDir(s.objDir)
	if err != nil {
		return nil, st, fmt.Errorf("cdn: rebuild: %w", err)
	}
	for _, sh := range shards {
		shardDir := filepath.Join(s.objDir, sh.Name())
		if !sh.IsDir() {
			os.Remove(shardDir)
			st.broken++
			continue
		}
		files, err := os.ReadDir(shardDir)
		if err != nil {
			return nil, st, fmt.Errorf("cdn: rebuild: %w", err)
		}
		for _, f := range files {
			hash, gen, kind, ok := parseObjName(f.Name())
			if !ok || hash[:2] != sh.Name() {
				os.RemoveAll(filepath.Join(shardDir, f.Name()))
				st.broken++
				continue
			}
			maxGen = max(maxGen, gen)
			vs := byHash[hash]
			var v *version
			for _, x := range vs {
				if x.gen == gen {
					v = x
				}
			}
			if v == nil {
				v = &version{gen: gen}
				byHash[hash] = append(vs, v)
			}
			if kind == "data" {
				v.data = true
			} else {
				v.meta = true
			}
		}
	}
	s.gen.Store(maxGen)

	var entries []*entry
	for hash, vs := range byHash {
		// The newest complete version wins; everything else goes.
		slices.SortFunc(vs, func(a, b *version) int { return cmp.Compare(b.gen, a.gen) })
		var kept *entry
		for _, v := range vs {
			dataPath, metaPath := s.paths(hash, v.gen)
			if kept == nil && v.data && v.meta {
				if e, ok := s.load(hash, v.gen, dataPath, metaPath); ok {
					kept = e
					continue
				}
			}
			os.Remove(metaPath)
			os.Remove(dataPath)
			st.broken++
		}
		if kept != nil {
			entries = append(entries, kept)
		}
	}

	rank := s.readOrder()
	slices.SortFunc(entries, func(a, b *entry) int {
		ra, oka := rank[a.hash+"."+strconv.FormatUint(a.gen, 16)]
		rb, okb := rank[b.hash+"."+strconv.FormatUint(b.gen, 16)]
		switch {
		case oka && okb:
			return ra - rb
		case oka != okb: // listed ones were used before the unlisted (newer) ones
			if oka {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.validated, b.validated)
	})
	return entries, st, nil
}

// load reads and checks one version's .meta against its .data.
func (s *store) load(hash string, gen uint64, dataPath, metaPath string) (*entry, bool) {
	b, err := os.ReadFile(metaPath)
	if err != nil {
		return nil, false
	}
	var m objMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, false
	}
	if m.Gen != gen || ValidateKey(m.Key) != nil || keyHash(m.Key) != hash {
		return nil, false
	}
	md5, err := hex.DecodeString(m.MD5)
	if err != nil || len(md5) != 16 {
		return nil, false
	}
	fi, err := os.Stat(dataPath)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != m.Size {
		return nil, false
	}
	e := entryFromMeta(&m)
	e.dataPath = dataPath
	return e, true
}

func parseObjName(name string) (hash string, gen uint64, kind string, ok bool) {
	base, kind, found := strings.Cut(name, ".")
	if !found || len(base) != 64 {
		return "", 0, "", false
	}
	genStr, kind, found := strings.Cut(kind, ".")
	if !found || len(genStr) != 16 || (kind != "data" && kind != "meta") {
		return "", 0, "", false
	}
	if _, err := hex.DecodeString(base); err != nil || strings.ToLower(base) != base {
		return "", 0, "", false
	}
	gen, err := strconv.ParseUint(genStr, 16, 64)
	if err != nil {
		return "", 0, "", false
	}
	return base, gen, kind, true
}

// readOrder reads and removes lru.order (it describes the folder only as it
// was at that Close).
func (s *store) readOrder() map[string]int {
	f, err := os.Open(s.orderPath)
	if err != nil {
		return nil
	}
	defer func() {
		f.Close()
		os.Remove(s.orderPath)
	}()
	rank := map[string]int{}
	sc := bufio.NewScanner(f)
	for i := 0; sc.Scan(); i++ {
		rank[sc.Text()] = i
	}
	return rank
}

// writeOrder records recency, oldest first.
func (s *store) writeOrder(entries []*entry) error {
	var b strings.Builder
	for _, e := range entries {
		b.WriteString(e.hash)
		b.WriteByte('.')
		b.WriteString(strconv.FormatUint(e.gen, 16))
		b.WriteByte('\n')
	}
	tmp := s.orderPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, s.orderPath)
}
