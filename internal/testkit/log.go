package testkit

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// Logger returns a logger that writes text records at every level to the
// returned LogBuffer, for tests that check what was logged.
func Logger(t testing.TB) (*slog.Logger, *LogBuffer) {
	t.Helper()
	buf := &LogBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// LogBuffer collects log output. It is safe for concurrent use: the code
// under test writes from its goroutines while the test reads. It is an
// io.Writer, so it can also collect a subprocess's output.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Contains reports whether substr was written.
func (l *LogBuffer) Contains(substr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Contains(l.b.Bytes(), []byte(substr))
}

// Count returns how many times substr was written.
func (l *LogBuffer) Count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Count(l.b.Bytes(), []byte(substr))
}

// WaitFor waits until substr is written, and fails the test with the
// output so far if that does not happen within timeout.
func (l *LogBuffer) WaitFor(t testing.TB, timeout time.Duration, substr string) {
	t.Helper()
	if !Poll(timeout, func() bool { return l.Contains(substr) }) {
		t.Fatalf("timed out after %v waiting for %q in the log:\n%s", timeout, substr, indent(l.String()))
	}
}

func indent(s string) string {
	if s == "" {
		return "\t(empty)"
	}
	return "\t" + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n\t")
}
