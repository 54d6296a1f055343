package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
)

func mustBSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := bson.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sampleMsg(t testing.TB, flags uint32) []byte {
	body := mustBSON(t, bson.D{{Key: "insert", Value: "c"}, {Key: "$db", Value: "d"}})
	docs := [][]byte{mustBSON(t, bson.D{{Key: "_id", Value: 1}}), mustBSON(t, bson.D{{Key: "_id", Value: 2}, {Key: "x", Value: "y"}})}
	return AppendMsg(nil, 7, 0, flags, body, Sequence{Identifier: "documents", Docs: docs})
}

func TestMsgRoundTrip(t *testing.T) {
	for _, flags := range []uint32{0, FlagChecksumPresent, FlagMoreToCome | FlagChecksumPresent, FlagExhaustAllowed} {
		b := sampleMsg(t, flags)
		m, err := ParseMsg(b)
		if err != nil {
			t.Fatalf("flags %#x: %v", flags, err)
		}
		if m.Header.RequestID != 7 || m.Flags != flags || len(m.Sequences) != 1 || len(m.Sequences[0].Docs) != 2 || m.Sequences[0].Identifier != "documents" {
			t.Fatalf("flags %#x: decoded %+v", flags, m)
		}
		if got := bson.Raw(m.Body).Lookup("insert").StringValue(); got != "c" {
			t.Fatalf("body insert = %q", got)
		}
		again := AppendMsg(nil, m.Header.RequestID, m.Header.ResponseTo, m.Flags, m.Body, m.Sequences...)
		if !bytes.Equal(again, b) {
			t.Fatalf("flags %#x: re-encoding differs", flags)
		}
	}
}

func TestMsgRejects(t *testing.T) {
	good := sampleMsg(t, FlagChecksumPresent)
	mutate := func(f func(b []byte) []byte) []byte {
		c := append([]byte(nil), good...)
		return f(c)
	}
	cases := map[string][]byte{
		"bad checksum": mutate(func(b []byte) []byte { b[len(b)-1] ^= 0xFF; return b }),
		"length too long": mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b, uint32(len(b)+1))
			return b
		}),
		"truncated":             good[:len(good)-3],
		"unknown required flag": AppendMsg(nil, 1, 0, 1<<3, mustBSON(t, bson.D{{Key: "ping", Value: 1}})),
		"no body":               AppendMsg(nil, 1, 0, 0, nil)[:HeaderLen+4],
		"two bodies": func() []byte {
			body := mustBSON(t, bson.D{{Key: "ping", Value: 1}})
			b := AppendMsg(nil, 1, 0, 0, body)
			b = append(b, 0)
			b = append(b, body...)
			binary.LittleEndian.PutUint32(b, uint32(len(b)))
			return b
		}(),
		"unknown section kind": func() []byte {
			b := AppendMsg(nil, 1, 0, 0, mustBSON(t, bson.D{{Key: "ping", Value: 1}}))
			b = append(b, 2, 0, 0, 0, 0)
			binary.LittleEndian.PutUint32(b, uint32(len(b)))
			return b
		}(),
		"body length lies": func() []byte {
			b := AppendMsg(nil, 1, 0, 0, mustBSON(t, bson.D{{Key: "ping", Value: 1}}))
			binary.LittleEndian.PutUint32(b[HeaderLen+5:], 9999)
			return b
		}(),
		"sequence size lies": func() []byte {
			b := sampleMsg(t, 0)
			i := bytes.Index(b, []byte("documents")) - 4
			binary.LittleEndian.PutUint32(b[i:], 3)
			return b
		}(),
		"sequence doc overruns": func() []byte {
			b := sampleMsg(t, 0)
			i := bytes.Index(b, []byte("documents")) + len("documents") + 1
			binary.LittleEndian.PutUint32(b[i:], 200)
			return b
		}(),
		"bad inner string": func() []byte {
			body := mustBSON(t, bson.D{{Key: "ping", Value: "abc"}})
			i := bytes.Index(body, []byte("abc")) - 4
			binary.LittleEndian.PutUint32(body[i:], 100)
			return AppendMsg(nil, 1, 0, 0, body)
		}(),
	}
	for name, b := range cases {
		if _, err := ParseMsg(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestQueryReplyRoundTrip(t *testing.T) {
	q := &Query{Header: Header{RequestID: 3}, FullCollectionName: "admin.$cmd", NumberToReturn: -1,
		Query: mustBSON(t, bson.D{{Key: "isMaster", Value: 1}, {Key: "compression", Value: bson.A{"zstd"}}})}
	b := AppendQuery(nil, q)
	got, err := ParseQuery(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.FullCollectionName != "admin.$cmd" || got.NumberToReturn != -1 || !bytes.Equal(got.Query, q.Query) || got.ReturnFields != nil {
		t.Fatalf("got %+v", got)
	}
	q.ReturnFields = mustBSON(t, bson.D{{Key: "a", Value: 1}})
	got, err = ParseQuery(AppendQuery(nil, q))
	if err != nil || !bytes.Equal(got.ReturnFields, q.ReturnFields) {
		t.Fatalf("with selector: %v %+v", err, got)
	}
	bad := AppendQuery(nil, q)
	bad = append(bad, 1, 2, 3)
	binary.LittleEndian.PutUint32(bad, uint32(len(bad)))
	if _, err := ParseQuery(bad); err == nil {
		t.Fatal("trailing bytes accepted")
	}

	r := &Reply{Header: Header{ResponseTo: 3}, CursorID: 42, Documents: [][]byte{mustBSON(t, bson.D{{Key: "ok", Value: 1.0}})}}
	rb := AppendReply(nil, r)
	gr, err := ParseReply(rb)
	if err != nil || gr.CursorID != 42 || len(gr.Documents) != 1 || gr.Header.ResponseTo != 3 {
		t.Fatalf("reply: %v %+v", err, gr)
	}
	binary.LittleEndian.PutUint32(rb[HeaderLen+16:], 2)
	if _, err := ParseReply(rb); err == nil {
		t.Fatal("numberReturned lie accepted")
	}
}

func TestParseCompressedRefused(t *testing.T) {
	b := make([]byte, 25)
	binary.LittleEndian.PutUint32(b, 25)
	binary.LittleEndian.PutUint32(b[12:], uint32(OpCompressed))
	if _, err := Parse(b); !errors.Is(err, ErrCompressed) {
		t.Fatalf("got %v", err)
	}
}

func TestReadMessage(t *testing.T) {
	m := sampleMsg(t, 0)
	r := bytes.NewReader(append(append([]byte(nil), m...), m...))
	buf := make([]byte, 0, 8)
	for i := 0; i < 2; i++ {
		got, err := ReadMessage(r, buf, 0)
		if err != nil || !bytes.Equal(got, m) {
			t.Fatalf("read %d: %v", i, err)
		}
		buf = got
	}
	if _, err := ReadMessage(r, buf, 0); err != io.EOF {
		t.Fatalf("at end: %v", err)
	}
	huge := make([]byte, 16)
	binary.LittleEndian.PutUint32(huge, 1<<30)
	if _, err := ReadMessage(bytes.NewReader(huge), nil, 0); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("huge: %v", err)
	}
	small := make([]byte, 16)
	binary.LittleEndian.PutUint32(small, 3)
	if _, err := ReadMessage(bytes.NewReader(small), nil, 0); err == nil {
		t.Fatal("short length accepted")
	}
	if _, err := ReadMessage(bytes.NewReader(m[:30]), nil, 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v", err)
	}
}

// chunkReader returns at most n bytes a call, as a socket does.
type chunkReader struct {
	r io.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

// TestReadMessageGrowsAsBytesArrive: the buffer follows the bytes received,
// not the length announced, and a large message still arrives whole.
func TestReadMessageGrowsAsBytesArrive(t *testing.T) {
	hdr := make([]byte, HeaderLen)
	binary.LittleEndian.PutUint32(hdr, DefaultMaxMessageSize)
	stalled := io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(make([]byte, 16)))
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	if _, err := ReadMessage(stalled, nil, 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("stalled: %v", err)
	}
	runtime.ReadMemStats(&ms)
	if grew := ms.TotalAlloc - before; grew > 1<<20 {
		t.Fatalf("16 bytes of an announced 48 MB message cost %d bytes", grew)
	}
	short := append(append([]byte(nil), hdr...), make([]byte, 100)...)
	binary.LittleEndian.PutUint32(short, uint32(len(short)))
	if got, _ := ReadMessage(bytes.NewReader(short), nil, 0); cap(got) != len(short) {
		t.Fatalf("a %d-byte message took a %d-byte buffer", len(short), cap(got))
	}
	big := make([]byte, 20<<20+7)
	for i := range big {
		big[i] = byte(i * 7)
	}
	binary.LittleEndian.PutUint32(big, uint32(len(big)))
	got, err := ReadMessage(chunkReader{bytes.NewReader(big), 3000}, nil, 0)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("big message: %v (%d bytes)", err, len(got))
	}
	if cap(got) > 2*len(big) {
		t.Fatalf("a %d-byte message took a %d-byte buffer", len(big), cap(got))
	}
	// A reused buffer large enough is used as is.
	again, err := ReadMessage(bytes.NewReader(big), got, 0)
	if err != nil || &again[0] != &got[0] || !bytes.Equal(again, big) {
		t.Fatalf("reuse: %v", err)
	}
}

func TestValidateBSON(t *testing.T) {
	all := mustBSON(t, bson.D{
		{Key: "d", Value: 1.5}, {Key: "s", Value: "x"}, {Key: "doc", Value: bson.D{{Key: "a", Value: bson.A{1, "b"}}}},
		{Key: "bin", Value: bson.Binary{Subtype: 0, Data: []byte{1, 2}}}, {Key: "oid", Value: bson.NewObjectID()},
		{Key: "b", Value: true}, {Key: "dt", Value: bson.DateTime(5)}, {Key: "n", Value: nil},
		{Key: "re", Value: bson.Regex{Pattern: "a", Options: "i"}}, {Key: "js", Value: bson.JavaScript("f()")},
		{Key: "cws", Value: bson.CodeWithScope{Code: "f()", Scope: bson.D{{Key: "x", Value: 1}}}},
		{Key: "i", Value: int32(1)}, {Key: "ts", Value: bson.Timestamp{T: 1, I: 2}}, {Key: "l", Value: int64(3)},
		{Key: "dec", Value: bson.NewDecimal128(1, 2)}, {Key: "min", Value: bson.MinKey{}}, {Key: "max", Value: bson.MaxKey{}},
		{Key: "ptr", Value: bson.DBPointer{DB: "a", Pointer: bson.NewObjectID()}}, {Key: "sym", Value: bson.Symbol("s")},
		{Key: "u", Value: bson.Undefined{}},
	})
	if err := ValidateBSON(all); err != nil {
		t.Fatal(err)
	}
	trailing := append(append([]byte(nil), all...), 0)
	if err := ValidateBSON(trailing); err == nil {
		t.Fatal("trailing byte accepted")
	}
	// Deep nesting is refused rather than recursing without bound.
	var deep any = bson.D{{Key: "x", Value: 1}}
	for i := 0; i < MaxDepth+5; i++ {
		deep = bson.D{{Key: "x", Value: deep}}
	}
	if err := ValidateBSON(mustBSON(t, deep)); err == nil {
		t.Fatal("deep nesting accepted")
	}
	for i := range all {
		// Every truncation must fail cleanly.
		c := append([]byte(nil), all[:i]...)
		if len(c) >= 4 {
			binary.LittleEndian.PutUint32(c, uint32(len(c)))
		}
		if err := ValidateBSON(c); err == nil && i < len(all) {
			t.Fatalf("truncation at %d accepted", i)
		}
	}
}

func TestStripField(t *testing.T) {
	in := mustBSON(t, bson.D{{Key: "_id", Value: 1}, {Key: "_edgenode", Value: bson.D{{Key: "v", Value: 3}}},
		{Key: "cursor", Value: bson.D{{Key: "firstBatch", Value: bson.A{bson.D{{Key: "a", Value: 1}, {Key: "_edgenode", Value: 1}}, 5}}}}})
	out, changed := StripField(in, "_edgenode")
	if !changed {
		t.Fatal("nothing stripped")
	}
	if err := ValidateBSON(out); err != nil {
		t.Fatal(err)
	}
	want := mustBSON(t, bson.D{{Key: "_id", Value: 1},
		{Key: "cursor", Value: bson.D{{Key: "firstBatch", Value: bson.A{bson.D{{Key: "a", Value: 1}}, 5}}}}})
	if !bytes.Equal(out, want) {
		t.Fatalf("got %v want %v", bson.Raw(out), bson.Raw(want))
	}
	same, changed := StripField(want, "_edgenode")
	if changed || &same[0] != &want[0] {
		t.Fatal("unchanged document was copied")
	}
	// A value (not a key) that mentions the name is left alone.
	v := mustBSON(t, bson.D{{Key: "note", Value: "_edgenode"}})
	if out, changed := StripField(v, "_edgenode"); changed || !bytes.Equal(out, v) {
		t.Fatal("string value stripped")
	}
}

// FuzzParse feeds arbitrary bytes to the message decoders: they must never
// panic, and whatever they accept must re-encode to something they accept
// again with the same content.
func FuzzParse(f *testing.F) {
	f.Add(sampleMsg(f, 0))
	f.Add(sampleMsg(f, FlagChecksumPresent))
	f.Add(sampleMsg(f, FlagMoreToCome|FlagExhaustAllowed))
	f.Add(AppendMsg(nil, 1, 0, 0, mustBSON(f, bson.D{{Key: "find", Value: "c"}, {Key: "filter", Value: bson.D{{Key: "a", Value: bson.D{{Key: "$gt", Value: 1}}}}}})))
	f.Add(AppendQuery(nil, &Query{FullCollectionName: "admin.$cmd", NumberToReturn: -1, Query: mustBSON(f, bson.D{{Key: "isMaster", Value: 1}})}))
	f.Add(AppendReply(nil, &Reply{CursorID: 9, Documents: [][]byte{mustBSON(f, bson.D{{Key: "ok", Value: 1}})}}))
	f.Add([]byte{16, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xDC, 7, 0, 0})
	f.Add([]byte{21, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xDD, 7, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *Msg:
			again := AppendMsg(nil, m.Header.RequestID, m.Header.ResponseTo, m.Flags, m.Body, m.Sequences...)
			m2, err := ParseMsg(again)
			if err != nil {
				t.Fatalf("re-encoded OP_MSG rejected: %v", err)
			}
			if !bytes.Equal(m2.Body, m.Body) || len(m2.Sequences) != len(m.Sequences) {
				t.Fatal("re-encoded OP_MSG differs")
			}
			for _, d := range append([][]byte{m.Body}, flatten(m.Sequences)...) {
				out, _ := StripField(d, "_edgenode")
				if err := ValidateBSON(out); err != nil {
					t.Fatalf("stripped document invalid: %v", err)
				}
			}
		case *Query:
			if _, err := ParseQuery(AppendQuery(nil, m)); err != nil {
				t.Fatalf("re-encoded OP_QUERY rejected: %v", err)
			}
		case *Reply:
			if _, err := ParseReply(AppendReply(nil, m)); err != nil {
				t.Fatalf("re-encoded OP_REPLY rejected: %v", err)
			}
		}
	})
}

func flatten(seqs []Sequence) [][]byte {
	var out [][]byte
	for _, s := range seqs {
		out = append(out, s.Docs...)
	}
	return out
}
