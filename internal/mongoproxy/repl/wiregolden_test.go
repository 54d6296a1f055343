package repl

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// Every message encodes to the bytes of the current version's golden file,
// and the golden files of every version a node still talks to (one older
// link version, and its own) decode to the same messages. A change of a
// message's bytes fails here: it needs a new WireVersion and a decoder for
// the old one, not an edit of the golden files (see "Versions" in wire.go).
func TestWireGolden(t *testing.T) {
	want := goldenMessages(t)
	cur := filepath.Join("testdata", "wire", fmt.Sprintf("v%d", WireVersion))
	for name, b := range want {
		g, err := os.ReadFile(filepath.Join(cur, name+".bin"))
		if err != nil {
			t.Errorf("%s: %v (a new message needs its golden file: REPL_WIRE_GOLDEN=%s go test -run TestWriteWireGolden)", name, err, cur)
			continue
		}
		if !bytes.Equal(b, g) {
			t.Errorf("%s encodes as\n%x\nversion %d's golden file has\n%x", name, b, WireVersion, g)
		}
	}
	for v := MinWireVersion; v <= WireVersion; v++ {
		dir := filepath.Join("testdata", "wire", fmt.Sprintf("v%d", v))
		files, err := filepath.Glob(filepath.Join(dir, "*.bin"))
		if err != nil || len(files) == 0 {
			t.Fatalf("version %d: no golden files in %s (%v)", v, dir, err)
		}
		for _, f := range files {
			name := strings.TrimSuffix(filepath.Base(f), ".bin")
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			exp, ok := want[name]
			if !ok {
				t.Errorf("version %d: %s is not a message this code knows", v, name)
				continue
			}
			if err := sameMessage(b, exp); err != nil {
				t.Errorf("version %d %s: %v", v, name, err)
			}
		}
	}
}

// sameMessage decodes golden and exp with the decoder of their type and
// compares what they say.
func sameMessage(golden, exp []byte) error {
	if len(golden) == 0 || len(exp) == 0 || golden[0] != exp[0] {
		return fmt.Errorf("type byte differs")
	}
	var a, b any
	var errA, errB error
	switch golden[0] {
	case msgOps:
		type ops struct {
			Origin string
			Prev   uint64
			Ops    []string
		}
		dec := func(m []byte) (any, error) {
			o, p, list, err := decodeOps(m)
			r := ops{Origin: o, Prev: p}
			for _, op := range list {
				raw, _ := op.MarshalBSON()
				r.Ops = append(r.Ops, string(raw))
			}
			return r, err
		}
		a, errA = dec(golden)
		b, errB = dec(exp)
	case msgAck:
		a, errA = decodeAck(golden)
		b, errB = decodeAck(exp)
	case msgHeartbeat:
		a, errA = decodeHeartbeat(golden)
		b, errB = decodeHeartbeat(exp)
	case msgLinks:
		a, errA = decodeLinks(golden)
		b, errB = decodeLinks(exp)
	default:
		a, errA = decodeSync(golden)
		b, errB = decodeSync(exp)
	}
	if errA != nil || errB != nil {
		return fmt.Errorf("decode: golden %v, current %v", errA, errB)
	}
	if !reflect.DeepEqual(a, b) {
		return fmt.Errorf("golden decodes to %+v, want %+v", a, b)
	}
	return nil
}

// The message types a version defines never change meaning: a new type
// gets the next byte. The types of version 1, in order.
func TestWireTypesStable(t *testing.T) {
	got := []byte{msgOps, msgAck, msgHeartbeat, msgSyncReq, msgSyncBegin, msgSyncItems, msgSyncAck, msgSyncEnd, msgSyncCancel, msgLinks}
	if !slices.Equal(got, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) {
		t.Errorf("message type bytes changed: %v", got)
	}
}
