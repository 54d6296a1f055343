package backup

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strings"
)

// hashingReader hashes every byte its reader hands out (not those it
// buffers ahead), so the sum covers exactly what was consumed.
type hashingReader struct {
	r *bufio.Reader
	h hash.Hash
}

func (hr *hashingReader) ReadByte() (byte, error) {
	b, err := hr.r.ReadByte()
	if err == nil {
		hr.h.Write([]byte{b})
	}
	return b, err
}

func (hr *hashingReader) Read(p []byte) (int, error) {
	n, err := hr.r.Read(p)
	hr.h.Write(p[:n])
	return n, err
}

type recordReader interface {
	io.ByteReader
	io.Reader
}

// ID is a backup's name in its store: the time it was taken and the node.
func ID(h *Header) string { return h.TakenAt.UTC().Format("20060102T150405Z") + "-" + h.Node }

// Take reads a backup stream (see Write) from r and stores it in st as a
// new backup: its parts, then its manifest. It returns the manifest and
// the backup's id. A stream that is cut, or whose checksum or counts do
// not match its trailer, is refused and no manifest is written (parts
// already stored stay behind, unnamed by any manifest).
func Take(ctx context.Context, r io.Reader, st Store, progress func(Manifest)) (*Manifest, string, error) {
	hr := &hashingReader{r: bufio.NewReaderSize(r, 256<<10), h: sha256.New()}
	magic := make([]byte, len(streamMagic))
	if _, err := io.ReadFull(hr, magic); err != nil || string(magic) != streamMagic {
		return nil, "", fmt.Errorf("backup: not a backup stream (%v)", noEOF(err))
	}
	kind, payload, err := readRecord(hr)
	if err != nil || kind != recHeader {
		return nil, "", fmt.Errorf("backup: stream has no header (%v)", err)
	}
	m := &Manifest{Format: Format, Version: Version, Compression: "gzip"}
	if err := json.Unmarshal(payload, &m.Header); err != nil {
		return nil, "", fmt.Errorf("backup: stream header: %w", err)
	}
	if m.Header.Version != Version {
		return nil, "", fmt.Errorf("backup: the node streams format version %d; this edgenode writes version %d", m.Header.Version, Version)
	}
	id := ID(&m.Header)
	var (
		buf  bytes.Buffer
		zw   = gzip.NewWriter(&buf)
		part Part
	)
	flush := func() error {
		if part.Items == 0 {
			return nil
		}
		if err := zw.Close(); err != nil {
			return err
		}
		part.Name = fmt.Sprintf("part-%06d.gz", len(m.Parts)+1)
		part.Bytes = int64(buf.Len())
		sum := sha256.Sum256(buf.Bytes())
		part.SHA256 = hex.EncodeToString(sum[:])
		if err := st.Put(ctx, id+"/"+part.Name, buf.Bytes()); err != nil {
			return err
		}
		m.Parts = append(m.Parts, part)
		m.Bytes += part.Bytes
		m.RawBytes += part.RawBytes
		if progress != nil {
			progress(*m)
		}
		buf.Reset()
		zw.Reset(&buf)
		part = Part{}
		return nil
	}
	for {
		before := hexSum(hr.h)
		kind, payload, err := readRecord(hr)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, "", errors.New("backup: the stream was cut before its end (node stopped or connection lost): nothing was kept")
			}
			return nil, "", fmt.Errorf("backup: reading the stream: %w", err)
		}
		switch kind {
		case recError:
			return nil, "", fmt.Errorf("backup: the node failed: %s", payload)
		case recTrailer:
			var t Trailer
			if err := json.Unmarshal(payload, &t); err != nil {
				return nil, "", fmt.Errorf("backup: stream trailer: %w", err)
			}
			if t.SHA256 != before {
				return nil, "", errors.New("backup: stream checksum mismatch: nothing was kept")
			}
			if t.Counts != m.Counts {
				return nil, "", fmt.Errorf("backup: the node sent %+v, %+v arrived", t.Counts, m.Counts)
			}
			if err := flush(); err != nil {
				return nil, "", err
			}
			b, err := m.seal()
			if err != nil {
				return nil, "", err
			}
			if err := st.Put(ctx, id+"/"+ManifestName, b); err != nil {
				return nil, "", err
			}
			return m, id, nil
		}
		it, err := decodeItem(kind, payload)
		if err != nil {
			return nil, "", fmt.Errorf("backup: %w", err)
		}
		m.Counts.add(it.Kind)
		if err := writeItem(zw, it); err != nil {
			return nil, "", err
		}
		part.Items++
		part.RawBytes += int64(recordSize(len(payload)))
		if part.RawBytes >= PartBytes {
			if err := flush(); err != nil {
				return nil, "", err
			}
		}
	}
}

// recordSize is the encoded size of a record with an n-byte payload.
func recordSize(n int) int {
	s := 2
	for v := uint64(n); v >= 0x80; v >>= 7 {
		s++
	}
	return s + n
}

// TakeFrom asks a live node for its backup stream (GET
// adminURL/v1/mongo/backup with the admin token) and stores it with Take.
func TakeFrom(ctx context.Context, hc *http.Client, adminURL, token string, st Store, progress func(Manifest)) (*Manifest, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(adminURL, "/")+"/v1/mongo/backup", nil)
	if err != nil {
		return nil, "", fmt.Errorf("backup: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("backup: ask the node: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, "", fmt.Errorf("backup: the node answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return Take(ctx, resp.Body, st, progress)
}
