package node

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/testkit"
)

// announced records what a readiness reporter told the mesh.
type announced struct {
	mu   sync.Mutex
	said []string
}

func (a *announced) set(_ context.Context, notReady string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.said = append(a.said, notReady)
	return nil
}

func (a *announced) last() (string, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.said) == 0 {
		return "(nothing)", 0
	}
	return a.said[len(a.said)-1], len(a.said)
}

// TestReadinessReporter: started, the node says it is ready; a failing
// check makes it say why not, at once; a reason that only changes its
// wording is not re-announced before reasonEvery; the check passing
// again makes it ready again.
func TestReadinessReporter(t *testing.T) {
	var mu sync.Mutex
	var failing error
	calls := 0
	check := func() error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return failing
	}
	polled := func() int {
		mu.Lock()
		defer mu.Unlock()
		return calls
	}
	fail := func(err error) {
		mu.Lock()
		failing = err
		mu.Unlock()
	}
	a := &announced{}
	log, logs := testkit.Logger(t)
	r := newReadinessReporter(a.set, []func() error{check}, log)
	r.interval = 10 * time.Millisecond
	r.reasonEvery = time.Hour
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer r.Stop(context.Background())
	testkit.WaitFor(t, 10*time.Second, "ready announced", func() bool { s, _ := a.last(); return s == "" })

	fail(errors.New("mongo replication: 5 ops of b waiting for 3s (max_lag 2s)"))
	testkit.WaitFor(t, 10*time.Second, "not ready announced", func() bool {
		s, _ := a.last()
		return s == "mongo replication: 5 ops of b waiting for 3s (max_lag 2s)"
	})
	_, n := a.last()
	fail(errors.New("mongo replication: 9 ops of b waiting for 4s (max_lag 2s)"))
	// The reporter polls the new wording a few times...
	c := polled()
	testkit.WaitFor(t, 10*time.Second, "three more polls", func() bool { return polled() >= c+3 })
	// ...and announces nothing until readiness flips.
	fail(nil)
	testkit.WaitFor(t, 10*time.Second, "ready again", func() bool { s, _ := a.last(); return s == "" })
	a.mu.Lock()
	between := a.said[n : len(a.said)-1]
	a.mu.Unlock()
	if len(between) != 0 {
		t.Errorf("re-announced a reworded reason before reasonEvery: %q", between)
	}
	for _, want := range []string{"node not ready", "max_lag 2s", "node ready"} {
		if !logs.Contains(want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}
