// Command landgen turns Natural Earth's land outline (TopoJSON, as in the
// npm package world-atlas, file land-110m.json; Natural Earth is in the
// public domain) into the SVG path the status page draws its world map
// with. The output is committed (internal/web/assets/land.path), so the
// binary needs no map data at run time and no page loads any from outside.
//
//	npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
//	go run ./internal/web/landgen -in package/land-110m.json > internal/web/assets/land.path
//
// Projection: equirectangular, x = lon+180, y = 90-lat (degrees), so a node
// is placed by the same two additions in the page's script. Rings are
// simplified (Douglas-Peucker, -tolerance degrees), rings smaller than
// -minarea square degrees and rings entirely south of -60° (Antarctica,
// where no node is) are dropped, and numbers are written with one decimal.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
)

type topology struct {
	Transform *struct {
		Scale     [2]float64 `json:"scale"`
		Translate [2]float64 `json:"translate"`
	} `json:"transform"`
	Objects map[string]geometry `json:"objects"`
	Arcs    [][][2]float64      `json:"arcs"`
}

type geometry struct {
	Type       string          `json:"type"`
	Arcs       json.RawMessage `json:"arcs"`
	Geometries []geometry      `json:"geometries"`
}

type pt struct{ x, y float64 }

func main() {
	in := flag.String("in", "land-110m.json", "TopoJSON file with an object named by -object")
	object := flag.String("object", "land", "TopoJSON object to draw")
	tol := flag.Float64("tolerance", 0.35, "simplification tolerance in degrees")
	minArea := flag.Float64("minarea", 1.5, "drop rings smaller than this many square degrees")
	flag.Parse()
	if err := run(*in, *object, *tol, *minArea); err != nil {
		fmt.Fprintln(os.Stderr, "landgen:", err)
		os.Exit(1)
	}
}

func run(in, object string, tol, minArea float64) error {
	b, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	var t topology
	if err := json.Unmarshal(b, &t); err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	arcs := decodeArcs(&t)
	g, ok := t.Objects[object]
	if !ok {
		return fmt.Errorf("%s: no object %q", in, object)
	}
	var polys [][][]int
	if err := collect(g, &polys); err != nil {
		return err
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	for _, poly := range polys {
		for _, ring := range poly {
			pts := stitch(arcs, ring)
			if southOf(pts, -60) || math.Abs(area(pts)) < minArea {
				continue
			}
			pts = simplify(unwrap(pts), tol)
			if len(pts) < 4 {
				continue
			}
			writeRing(w, pts, 0)
			// A ring that crosses the antimeridian (Chukotka, Fiji) is
			// drawn again on the other side of the map.
			lo, hi := pts[0].x, pts[0].x
			for _, p := range pts {
				lo, hi = math.Min(lo, p.x), math.Max(hi, p.x)
			}
			if hi > 180 {
				writeRing(w, pts, -360)
			}
			if lo < -180 {
				writeRing(w, pts, 360)
			}
		}
	}
	return w.WriteByte('\n')
}

// decodeArcs undoes TopoJSON's quantization and delta encoding.
func decodeArcs(t *topology) [][]pt {
	out := make([][]pt, len(t.Arcs))
	for i, a := range t.Arcs {
		var x, y float64
		for _, p := range a {
			if t.Transform != nil {
				x, y = x+p[0], y+p[1]
				out[i] = append(out[i], pt{x*t.Transform.Scale[0] + t.Transform.Translate[0], y*t.Transform.Scale[1] + t.Transform.Translate[1]})
			} else {
				out[i] = append(out[i], pt{p[0], p[1]})
			}
		}
	}
	return out
}

func collect(g geometry, polys *[][][]int) error {
	switch g.Type {
	case "GeometryCollection":
		for _, c := range g.Geometries {
			if err := collect(c, polys); err != nil {
				return err
			}
		}
	case "Polygon":
		var p [][]int
		if err := json.Unmarshal(g.Arcs, &p); err != nil {
			return err
		}
		*polys = append(*polys, p)
	case "MultiPolygon":
		var mp [][][]int
		if err := json.Unmarshal(g.Arcs, &mp); err != nil {
			return err
		}
		*polys = append(*polys, mp...)
	}
	return nil
}

// stitch joins a ring's arcs; ~i is arc i reversed, and each arc after the
// first repeats the previous one's last point.
func stitch(arcs [][]pt, ring []int) []pt {
	var out []pt
	for k, i := range ring {
		var a []pt
		if i >= 0 {
			a = arcs[i]
		} else {
			src := arcs[^i]
			a = make([]pt, len(src))
			for j := range src {
				a[j] = src[len(src)-1-j]
			}
		}
		if k > 0 && len(a) > 0 {
			a = a[1:]
		}
		out = append(out, a...)
	}
	return out
}

// unwrap makes longitudes continuous: a step of more than 180° is a crossing
// of the antimeridian, not a line across the whole map.
func unwrap(pts []pt) []pt {
	out := make([]pt, len(pts))
	copy(out, pts)
	for i := 1; i < len(out); i++ {
		for out[i].x-out[i-1].x > 180 {
			out[i].x -= 360
		}
		for out[i].x-out[i-1].x < -180 {
			out[i].x += 360
		}
	}
	return out
}

func southOf(pts []pt, lat float64) bool {
	for _, p := range pts {
		if p.y > lat {
			return false
		}
	}
	return true
}

func area(pts []pt) float64 {
	var s float64
	for i := range pts {
		j := (i + 1) % len(pts)
		s += pts[i].x*pts[j].y - pts[j].x*pts[i].y
	}
	return s / 2
}

// simplify is Douglas-Peucker on a closed ring (first point kept as anchor).
func simplify(pts []pt, tol float64) []pt {
	if len(pts) < 4 {
		return pts
	}
	keep := make([]bool, len(pts))
	keep[0], keep[len(pts)-1] = true, true
	// Split the ring at its farthest point from the anchor so that both
	// halves are open polylines.
	far, fd := 0, -1.0
	for i, p := range pts {
		if d := math.Hypot(p.x-pts[0].x, p.y-pts[0].y); d > fd {
			far, fd = i, d
		}
	}
	keep[far] = true
	dp(pts, 0, far, tol, keep)
	dp(pts, far, len(pts)-1, tol, keep)
	var out []pt
	for i, k := range keep {
		if k {
			out = append(out, pts[i])
		}
	}
	return out
}

func dp(pts []pt, a, b int, tol float64, keep []bool) {
	if b <= a+1 {
		return
	}
	idx, dmax := -1, tol
	for i := a + 1; i < b; i++ {
		if d := segDist(pts[i], pts[a], pts[b]); d > dmax {
			idx, dmax = i, d
		}
	}
	if idx < 0 {
		return
	}
	keep[idx] = true
	dp(pts, a, idx, tol, keep)
	dp(pts, idx, b, tol, keep)
}

func segDist(p, a, b pt) float64 {
	dx, dy := b.x-a.x, b.y-a.y
	l := dx*dx + dy*dy
	if l == 0 {
		return math.Hypot(p.x-a.x, p.y-a.y)
	}
	t := math.Max(0, math.Min(1, ((p.x-a.x)*dx+(p.y-a.y)*dy)/l))
	return math.Hypot(p.x-a.x-t*dx, p.y-a.y-t*dy)
}

// writeRing writes "M x y" then relative "l dx dy" steps and "z", in the
// projected frame, one decimal: the shortest form that still looks right.
func writeRing(w *bufio.Writer, pts []pt, shift float64) {
	q := func(v float64) int { return int(math.Round(v * 10)) }
	px, py := q(pts[0].x+180+shift), q(90-pts[0].y)
	fmt.Fprintf(w, "M%s %s", dec(px), dec(py))
	w.WriteString("l")
	first := true
	for _, p := range pts[1 : len(pts)-1] {
		x, y := q(p.x+180+shift), q(90-p.y)
		if x == px && y == py {
			continue
		}
		if !first {
			w.WriteByte(' ')
		}
		first = false
		w.WriteString(dec(x - px))
		w.WriteByte(' ')
		w.WriteString(dec(y - py))
		px, py = x, y
	}
	w.WriteString("z")
}

// dec writes tenths as a decimal with no needless zeros: 12 -> "1.2", 10 -> "1", -3 -> "-.3".
func dec(v int) string {
	neg := v < 0
	if neg {
		v = -v
	}
	s := strconv.Itoa(v / 10)
	if r := v % 10; r != 0 {
		if s == "0" {
			s = ""
		}
		s += "." + strconv.Itoa(r)
	}
	if neg {
		s = "-" + s
	}
	return s
}
