package testkit

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestFreePortNeverRepeats(t *testing.T) {
	// Closing each listener right away is what lets the kernel offer the
	// same port again; the kit must not pass that on.
	seen := map[int]bool{}
	for range 200 {
		p := FreePort(t, "127.0.0.1")
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	for range 50 {
		p := FreeUDPTCPPort(t, "127.0.0.1")
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}

func TestFreePortConcurrent(t *testing.T) {
	var mu sync.Mutex
	seen := map[int]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				p, err := PickPort("127.0.0.1", false)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[p] {
					t.Errorf("port %d handed out twice", p)
				}
				seen[p] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestFreeUDPTCPPortBindsBoth(t *testing.T) {
	p := FreeUDPTCPPort(t, "127.0.0.1")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestPickPortBadAddress(t *testing.T) {
	if _, err := PickPort("192.0.2.1", false); err == nil || !strings.Contains(err.Error(), "192.0.2.1") {
		t.Fatalf("a port on an address this machine lacks: err %v", err)
	}
}

// fatalTB records Fatalf instead of stopping the goroutine, so the failure
// path of the helpers can be checked.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
}

func TestWaitFor(t *testing.T) {
	n := 0
	WaitFor(t, 10*time.Second, "the third poll", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("cond polled %d times after it held", n)
	}

	f := &fatalTB{TB: t}
	WaitFor(f, 20*time.Millisecond, "Godot", func() bool { return false })
	if !strings.Contains(f.msg, "Godot") || !strings.Contains(f.msg, "20ms") {
		t.Fatalf("failure message %q names neither what nor the timeout", f.msg)
	}
}

func TestLogBuffer(t *testing.T) {
	log, buf := Logger(t)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 50 {
				log.Debug("step", "writer", i, "j", j)
			}
		})
	}
	wg.Go(func() { log.Info("later", "what", "the signal") })
	buf.WaitFor(t, 10*time.Second, `what="the signal"`)
	wg.Wait()
	if n := buf.Count("msg=step"); n != 200 {
		t.Errorf("%d debug records, want 200", n)
	}
	if !buf.Contains("level=INFO msg=later") || buf.Contains("nothing like this") {
		t.Errorf("Contains is wrong on:\n%s", buf)
	}

	f := &fatalTB{TB: t}
	buf.WaitFor(f, 10*time.Millisecond, "never logged")
	if !strings.Contains(f.msg, `"never logged"`) || !strings.Contains(f.msg, "msg=later") {
		t.Fatalf("failure message %q lacks the substring or the log", f.msg)
	}
}

// TestOnlyTestsImport keeps testkit out of production code: only test
// files and the benchmark drivers (scripts/, cmd/edgebench) may import it.
func TestOnlyTestsImport(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list over the module")
	}
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "github.com/edgenode/edgenode/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	const self = "github.com/edgenode/edgenode/internal/testkit"
	for line := range strings.Lines(string(out)) {
		pkg, imports, _ := strings.Cut(strings.TrimSpace(line), " ")
		if strings.HasPrefix(pkg, "github.com/edgenode/edgenode/scripts/") || pkg == "github.com/edgenode/edgenode/cmd/edgebench" {
			continue
		}
		for imp := range strings.FieldsSeq(imports) {
			if imp == self {
				t.Errorf("%s imports testkit outside its tests", pkg)
			}
		}
	}
}

func TestSampleCount(t *testing.T) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h", Help: "h"})
	if n := SampleCount(t, h); n != 0 {
		t.Fatalf("empty histogram: %d samples", n)
	}
	h.Observe(1)
	h.Observe(100)
	if n := SampleCount(t, h); n != 2 {
		t.Fatalf("%d samples, want 2", n)
	}
}

func TestSum(t *testing.T) {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c", Help: "c"}, []string{"version", "result"})
	v.WithLabelValues("TLS 1.3", "ok").Add(3)
	v.WithLabelValues("TLS 1.2", "ok").Add(2)
	v.WithLabelValues("unknown", "error").Inc()
	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{nil, 6},
		{[]string{"result", "ok"}, 5},
		{[]string{"result", "ok", "version", "TLS 1.2"}, 2},
		{[]string{"result", "timeout"}, 0},
		{[]string{"nosuchlabel", "ok"}, 0},
	} {
		if got := Sum(t, v, c.labels...); got != c.want {
			t.Errorf("Sum(%q) = %v, want %v", c.labels, got, c.want)
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "g"})
	g.Set(-1.5)
	if got := Sum(t, g); got != -1.5 {
		t.Errorf("gauge: %v", got)
	}
}
