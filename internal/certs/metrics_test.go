package certs_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/certs"
)

// TestMetricsTwiceOnOneRegistry: a second Manager or TicketKeys on one
// registry is a programming error that surfaces as an error naming the
// package, not as a panic.
func TestMetricsTwiceOnOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	kv := certs.NewMemKV()
	if _, err := certs.New(certs.Options{NodeID: "a"}, kv, testLog(), reg); err != nil {
		t.Fatal(err)
	}
	_, err := certs.New(certs.Options{NodeID: "b"}, kv, testLog(), reg)
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) || !strings.HasPrefix(err.Error(), "certs: ") {
		t.Errorf("second Manager: %v", err)
	}

	opts := certs.TicketOptions{Period: time.Hour}
	if _, err := certs.NewTicketKeys(opts, kv, func([][32]byte) {}, testLog(), reg); err != nil {
		t.Fatal(err)
	}
	_, err = certs.NewTicketKeys(opts, kv, func([][32]byte) {}, testLog(), reg)
	if !errors.As(err, &are) || !strings.HasPrefix(err.Error(), "certs: ") {
		t.Errorf("second TicketKeys: %v", err)
	}
}
