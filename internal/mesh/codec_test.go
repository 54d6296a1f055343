package mesh

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func sampleMeta() Meta {
	return Meta{
		ID:            "fra-1",
		Region:        "eu-central",
		Lat:           50.110924,
		Lon:           8.682127,
		IPv4:          netip.MustParseAddr("203.0.113.7"),
		IPv6:          netip.MustParseAddr("2001:db8::7"),
		Tags:          []string{"edge", "ssd"},
		State:         MetaDraining,
		Load:          0.25,
		BinaryVersion: "v1.2.3",
		ConfigVersion: "sha256:abcd",
		Link:          netip.MustParseAddrPort("203.0.113.7:7947"),
		Boot:          0x0123456789abcdef,
		Protocol:      Protocol,
	}
}

func TestMetaRoundTrip(t *testing.T) {
	for _, m := range []Meta{
		sampleMeta(),
		{ID: "x", State: MetaAlive, Link: netip.MustParseAddrPort("[2001:db8::1]:1"), Protocol: 1},
		{ID: "y", State: MetaLeaving, Lat: -90, Lon: 180, Link: netip.MustParseAddrPort("127.0.0.1:9"), Protocol: 7},
	} {
		b, err := encodeMeta(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > MetaMaxSize {
			t.Fatalf("%d bytes", len(b))
		}
		got, err := decodeMeta(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, m)
		}
	}
	b, _ := encodeMeta(sampleMeta())
	t.Logf("sample metadata: %d bytes", len(b))
}

func TestMetaSkipsUnknownFields(t *testing.T) {
	b, _ := encodeMeta(sampleMeta())
	b = append(b, 99, 3, 'n', 'e', 'w') // a field from a future version
	got, err := decodeMeta(b)
	if err != nil || got.ID != "fra-1" {
		t.Fatalf("%+v %v", got, err)
	}
}

func TestMetaRejects(t *testing.T) {
	good, _ := encodeMeta(Meta{ID: "n", State: MetaAlive, Link: netip.MustParseAddrPort("10.0.0.1:7947")})
	cases := map[string][]byte{
		"empty":        nil,
		"version":      append([]byte{2}, good[1:]...),
		"truncated":    good[:len(good)-1],
		"length":       {1, fID, 0xff, 0xff, 0xff, 0xff, 0x0f, 'n'},
		"no id":        {1, fState, 1, 1},
		"bad id":       append(append([]byte{}, good...), 0), // field 0 is unknown but then truncated
		"repeated":     append(append([]byte{}, good...), fState, 1, 1),
		"bad state":    {1, fID, 1, 'n', fState, 1, 9, fLink, 6, 10, 0, 0, 1, 0, 1},
		"no link":      {1, fID, 1, 'n', fState, 1, 1},
		"zero port":    {1, fID, 1, 'n', fState, 1, 1, fLink, 6, 10, 0, 0, 1, 0, 0},
		"bad ipv4":     {1, fID, 1, 'n', fState, 1, 1, fIPv4, 3, 1, 2, 3},
		"nan load":     {1, fID, 1, 'n', fState, 1, 1, fLoad, 4, 0x7f, 0xc0, 0, 0},
		"neg load":     {1, fID, 1, 'n', fState, 1, 1, fLoad, 4, 0xbf, 0x80, 0, 0},
		"bad location": {1, fID, 1, 'n', fState, 1, 1, fLocation, 8, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0},
		"bad utf8":     {1, fID, 1, 'n', fRegion, 1, 0xff, fState, 1, 1},
		"empty tag":    {1, fID, 1, 'n', fTag, 0, fState, 1, 1},
		"too large":    append([]byte{1}, bytes.Repeat([]byte{0}, MetaMaxSize)...),
	}
	for name, b := range cases {
		if m, err := decodeMeta(b); err == nil {
			t.Errorf("%s: accepted %+v", name, m)
		}
	}
	// Encoding refuses what decoding would.
	if _, err := encodeMeta(Meta{ID: "n", Tags: []string{strings.Repeat("t", 65)}}); err == nil {
		t.Error("long tag encoded")
	}
	many := make([]string, 17)
	for i := range many {
		many[i] = "t"
	}
	if _, err := encodeMeta(Meta{ID: "n", Tags: many}); err == nil {
		t.Error("17 tags encoded")
	}
	tags := make([]string, 16)
	for i := range tags {
		tags[i] = strings.Repeat("x", 64)
	}
	if _, err := encodeMeta(Meta{ID: "n", Tags: tags}); !errors.Is(err, errMetaTooLarge) {
		t.Errorf("oversized metadata: %v", err)
	}
}

func FuzzMetaDecoder(f *testing.F) {
	b, _ := encodeMeta(sampleMeta())
	f.Add(b)
	b, _ = encodeMeta(Meta{ID: "x", State: MetaAlive, Link: netip.MustParseAddrPort("[::1]:5")})
	f.Add(b)
	f.Add([]byte{1, fID, 1, 'n', fState, 1, 1, 99, 0, fLink, 6, 10, 0, 0, 1, 0, 1})
	f.Add([]byte{})
	f.Add([]byte{1, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(b)
		if err != nil {
			return
		}
		// Whatever decodes must encode and decode to the same thing.
		b2, err := encodeMeta(m)
		if err != nil {
			t.Fatalf("decoded metadata does not encode: %v (%+v)", err, m)
		}
		m2, err := decodeMeta(b2)
		if err != nil {
			t.Fatalf("re-encoded metadata does not decode: %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed metadata:\n%+v\n%+v", m, m2)
		}
	})
}

func TestFrameRoundTrip(t *testing.T) {
	msgs := [][]byte{nil, []byte("a"), bytes.Repeat([]byte{7}, 127), bytes.Repeat([]byte{8}, 128), bytes.Repeat([]byte{9}, 70000)}
	b := appendStreamHeader(nil, Protocol, "pubsub")
	for _, m := range msgs {
		before := len(b)
		b = appendFrame(b, m)
		if len(b)-before != frameSize(len(m)) {
			t.Errorf("frameSize(%d) = %d, encoded %d", len(m), frameSize(len(m)), len(b)-before)
		}
	}
	r := bufio.NewReader(bytes.NewReader(b))
	topic, err := readStreamHeader(r, Protocol)
	if err != nil || topic != "pubsub" {
		t.Fatal(topic, err)
	}
	for i, want := range msgs {
		got, err := readFrame(r, 1<<20)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	if _, err := readFrame(r, 1<<20); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
}

func TestFrameRejects(t *testing.T) {
	r := func(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
	if _, err := readFrame(r(appendFrame(nil, make([]byte, 100))), 99); !errors.Is(err, errFrameTooLarge) {
		t.Errorf("oversized frame: %v", err)
	}
	if _, err := readFrame(r([]byte{0x80}), 10); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut length: %v", err)
	}
	if _, err := readFrame(r([]byte{5, 1, 2}), 10); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut body: %v", err)
	}
	if _, err := readFrame(r(bytes.Repeat([]byte{0xff}, 11)), 10); err == nil {
		t.Error("overlong varint accepted")
	}
	for name, b := range map[string][]byte{
		"version": {2, 1, 't'},
		"empty":   {1, 0},
		"cut":     {1, 5, 't'},
		"space":   {1, 2, 't', ' '},
		"ctrl":    {1, 1, 0},
		"nothing": {},
	} {
		if _, err := readStreamHeader(r(b), 1); !errors.Is(err, errBadHeader) {
			t.Errorf("%s header: %v", name, err)
		}
	}
}

// FuzzFrameDecoder feeds arbitrary bytes as a link stream: a header and
// frames. Decoding must never panic or return a frame beyond the limit, and
// what decodes must survive re-encoding unchanged.
func FuzzFrameDecoder(f *testing.F) {
	seed := appendStreamHeader(nil, Protocol, "repl")
	seed = appendFrame(seed, []byte("hello"))
	seed = appendFrame(seed, nil)
	seed = appendFrame(seed, bytes.Repeat([]byte("x"), 300))
	f.Add(seed)
	f.Add(appendStreamHeader(nil, Protocol, "t"))
	f.Add([]byte{1, 1, 't', 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{1, 1, 't', 0x80})
	f.Add([]byte{1, 1, 't', 0x80, 0x00}) // non-minimal varint for 0
	f.Add([]byte{1, 3, 'a', 'b'})
	f.Add([]byte{})
	const max = 4096
	decode := func(b []byte) (string, [][]byte, error) {
		r := bufio.NewReader(bytes.NewReader(b))
		topic, err := readStreamHeader(r, Protocol)
		if err != nil {
			return "", nil, err
		}
		var msgs [][]byte
		for {
			msg, err := readFrame(r, max)
			if err != nil {
				return topic, msgs, err
			}
			if len(msg) > max {
				panic("frame beyond the limit")
			}
			msgs = append(msgs, msg)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		topic, msgs, err := decode(b)
		if topic == "" {
			return
		}
		if err == nil {
			t.Fatal("decoder stopped without an error")
		}
		out := appendStreamHeader(nil, Protocol, topic)
		for _, m := range msgs {
			out = appendFrame(out, m)
		}
		topic2, msgs2, err := decode(out)
		if err != io.EOF || topic2 != topic || len(msgs2) != len(msgs) {
			t.Fatalf("re-encoded stream decodes to %q, %d frames, %v", topic2, len(msgs2), err)
		}
		for i := range msgs {
			if !bytes.Equal(msgs[i], msgs2[i]) {
				t.Fatalf("frame %d changed", i)
			}
		}
	})
}
