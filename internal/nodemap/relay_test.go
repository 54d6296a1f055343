package nodemap

import (
	"testing"
	"time"

	"github.com/hashicorp/serf/coordinate"
)

func coordAt(ms float64) *coordinate.Coordinate {
	c := coordinate.NewCoordinate(coordinate.DefaultConfig())
	c.Vec[0] = ms / 1000 // seconds, one dimension: distance is |a-b|
	c.Height = 0
	return c
}

func TestRelayCost(t *testing.T) {
	a, x, b := coordAt(0), coordAt(30), coordAt(10)
	got, ok := RelayCost(a, x, b)
	if !ok || got.Round(time.Millisecond) != 50*time.Millisecond {
		t.Fatalf("cost %v %v, want 50ms", got, ok)
	}
	if _, ok := RelayCost(a, nil, b); ok {
		t.Fatal("a missing coordinate gave a cost")
	}
}

func TestPickRelay(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct {
		name  string
		cands []RelayCandidate
		want  string
	}{
		{"none", nil, ""},
		{"no coordinates: lowest id", []RelayCandidate{{ID: "n3"}, {ID: "n2"}}, "n2"},
		{"cheapest", []RelayCandidate{{ID: "n2", Cost: ms(90), Known: true}, {ID: "n3", Cost: ms(20), Known: true}}, "n3"},
		{"within the margin: lowest id", []RelayCandidate{{ID: "n3", Cost: ms(20), Known: true}, {ID: "n2", Cost: ms(21), Known: true}}, "n2"},
		{"10% margin", []RelayCandidate{{ID: "n2", Cost: ms(200), Known: true}, {ID: "n3", Cost: ms(185), Known: true}}, "n2"},
		{"known beats unknown", []RelayCandidate{{ID: "n2"}, {ID: "n3", Cost: ms(500), Known: true}}, "n3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := PickRelay(tc.cands); got != tc.want {
				t.Fatalf("picked %q, want %q", got, tc.want)
			}
		})
	}
}
