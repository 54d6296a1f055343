package node

import (
	"context"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// loadReporter feeds the mesh this node's load figure: the share of the
// machine's CPU the process used over the last interval (0 idle, 1 every
// core busy). DNS compares it between nodes to spread clients (power of two
// choices), so a relative, cheap, always-available figure is what matters.
type loadReporter struct {
	set      func(float64)
	interval time.Duration
	stop     chan struct{}
	done     sync.WaitGroup
}

// loadInterval is how often the load is measured and gossiped.
const loadInterval = 2 * time.Second

func (l *loadReporter) Name() string { return "load" }
func (l *loadReporter) Detail() string {
	return "this process's share of the machine's CPU, gossiped every " + l.interval.String() + " as the node's load"
}

func newLoadReporter(set func(float64), interval time.Duration) *loadReporter {
	return &loadReporter{set: set, interval: interval, stop: make(chan struct{})}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (l *loadReporter) Start(context.Context) error {
	l.done.Add(1)
	go func() {
		defer l.done.Done()
		t := time.NewTicker(l.interval)
		defer t.Stop()
		lastCPU, lastWall := cpuTime(), time.Now()
		for {
			select {
			case <-l.stop:
				return
			case now := <-t.C:
				cpu := cpuTime()
				wall := now.Sub(lastWall)
				if wall > 0 {
					l.set(float64(cpu-lastCPU) / float64(wall) / float64(runtime.NumCPU()))
				}
				lastCPU, lastWall = cpu, now
			}
		}
	}()
	return nil
}

func (l *loadReporter) Stop(context.Context) error {
	close(l.stop)
	l.done.Wait()
	return nil
}
