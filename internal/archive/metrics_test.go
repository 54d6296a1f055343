package archive

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/replica/replicatest"
)

// TestMetricsTwiceOnOneRegistry: a second Archiver on one registry is a
// programming error that surfaces as an error naming the package, not as a
// panic.
func TestMetricsTwiceOnOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := Options{Store: &backup.DirStore{Root: t.TempDir()}, Node: "n1"}
	if _, err := New(opts, replicatest.New("n1~a", time.Minute), reg); err != nil {
		t.Fatal(err)
	}
	_, err := New(opts, replicatest.New("n1~b", time.Minute), reg)
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) || !strings.HasPrefix(err.Error(), "archive: ") {
		t.Fatalf("second Archiver: %v", err)
	}
}
