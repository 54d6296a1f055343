package mesh

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestOptionsValidation(t *testing.T) {
	c := newCluster(t)
	base := c.options("n1")
	cases := []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"bad id", func(o *Options) { o.NodeID = "a b" }, "not allowed"},
		{"unknown profile", func(o *Options) { o.Profile = "moon" }, "unknown profile"},
		{"probe timeout", func(o *Options) { o.Tuning.ProbeTimeout = time.Hour }, "probe timeout"},
		{"key length", func(o *Options) { o.GossipKeys = [][]byte{[]byte("short")} }, "16, 24 or 32"},
		{"unencrypted off loopback", func(o *Options) {
			o.GossipKeys = nil
			o.BindAddr = "0.0.0.0:7946"
			o.AdvertiseAddr = "192.0.2.1:7946"
		}, "gossip keys are required"},
		{"unspecified advertise", func(o *Options) { o.BindAddr = "0.0.0.0:7946" }, "concrete IP"},
		{"no port", func(o *Options) { o.BindAddr = "127.0.0.1" }, "bind address"},
		{"no certs", func(o *Options) { o.CertFile = "" }, "required for peer links"},
		{"location", func(o *Options) { o.Lat = 91 }, "out of range"},
		{"ipv4 is v6", func(o *Options) { o.PublicIPv4 = netip.MustParseAddr("2001:db8::1") }, "not an IPv4"},
		{"ipv6 is v4", func(o *Options) { o.PublicIPv6 = netip.MustParseAddr("192.0.2.1") }, "not an IPv6"},
		{"cert for another node", func(o *Options) { o.NodeID = "n2" }, "names node \"n1\""},
		{"missing CA", func(o *Options) { o.CACertFile = o.CertFile + ".nope" }, "no such file"},
		{"huge metadata", func(o *Options) {
			o.Tags = nil
			for range 16 {
				o.Tags = append(o.Tags, strings.Repeat("t", 60))
			}
		}, "512 bytes"},
	}
	for _, tc := range cases {
		o := base
		tc.mod(&o)
		_, err := New(o, nil, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
	// Unencrypted gossip on loopback is allowed (with a warning).
	o := base
	o.GossipKeys = nil
	if _, err := New(o, nil, nil); err != nil {
		t.Errorf("unencrypted loopback: %v", err)
	}
	// Key rotation needs a keyring.
	m, _ := New(o, nil, nil)
	if err := m.AddGossipKey(testKey); err != ErrNoKeyring {
		t.Errorf("AddGossipKey without keyring: %v", err)
	}
}

func TestOptionsDefaults(t *testing.T) {
	c := newCluster(t)
	o := c.options("n1")
	o.BindAddr, o.LinkAddr, o.Profile = "", "", ""
	o.Tuning.SuspicionMult = 5
	r, err := o.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.BindAddr != DefaultBindAddr || r.LinkAddr != DefaultLinkAddr || r.QueueLen != DefaultQueueLen {
		t.Errorf("defaults: %+v", r)
	}
	wan, _ := ProfileTuning("wan")
	if r.tuning.ProbeInterval != wan.ProbeInterval || r.tuning.SuspicionMult != 5 {
		t.Errorf("tuning %+v", r.tuning)
	}
	if r.linkAdvertise.String() != DefaultLinkAddr {
		t.Errorf("link advertise %v", r.linkAdvertise)
	}
	// Unspecified link bind: advertise the gossip IP with the link port.
	o.LinkAddr = "0.0.0.0:9000"
	o.AdvertiseAddr = "127.0.0.5:7946"
	r, err = o.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.linkAdvertise.String() != "127.0.0.5:9000" {
		t.Errorf("link advertise %v", r.linkAdvertise)
	}
	// Without public addresses, the advertised gossip IP is published.
	o.PublicIPv4 = netip.Addr{}
	r, err = o.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.PublicIPv4.String() != "127.0.0.5" {
		t.Errorf("public IPv4 %v", r.PublicIPv4)
	}
}

func TestDetectionBoundDocumented(t *testing.T) {
	// The numbers quoted in the package documentation.
	wan, _ := ProfileTuning("wan")
	local, _ := ProfileTuning("local")
	for _, c := range []struct {
		t    Tuning
		n    int
		want time.Duration
	}{
		{wan, 3, 4900 * time.Millisecond},
		{wan, 20, 5580 * time.Millisecond},
		{local, 3, 1900 * time.Millisecond},
	} {
		if got := c.t.DetectionBound(c.n).Round(10 * time.Millisecond); got != c.want {
			t.Errorf("DetectionBound(%d) = %v, documented %v", c.n, got, c.want)
		}
	}
}

// TestProfilesPinned pins every value of the three profiles, so that
// deriving wan and local from lan (as memberlist's DefaultWANConfig and
// DefaultLocalConfig do) changes no timing. These are the full tables the
// profiles were written as before.
func TestProfilesPinned(t *testing.T) {
	want := map[string]Tuning{
		"wan": {
			ProbeInterval:           750 * time.Millisecond,
			ProbeTimeout:            400 * time.Millisecond,
			IndirectChecks:          3,
			SuspicionMult:           3,
			SuspicionMaxTimeoutMult: 4,
			RetransmitMult:          4,
			GossipInterval:          200 * time.Millisecond,
			GossipNodes:             4,
			GossipToTheDeadTime:     30 * time.Second,
			PushPullInterval:        30 * time.Second,
			TCPTimeout:              10 * time.Second,
			AwarenessMaxMultiplier:  8,
			RejoinInterval:          5 * time.Second,
		},
		"lan": {
			ProbeInterval:           500 * time.Millisecond,
			ProbeTimeout:            200 * time.Millisecond,
			IndirectChecks:          3,
			SuspicionMult:           3,
			SuspicionMaxTimeoutMult: 4,
			RetransmitMult:          4,
			GossipInterval:          100 * time.Millisecond,
			GossipNodes:             3,
			GossipToTheDeadTime:     20 * time.Second,
			PushPullInterval:        15 * time.Second,
			TCPTimeout:              5 * time.Second,
			AwarenessMaxMultiplier:  8,
			RejoinInterval:          3 * time.Second,
		},
		"local": {
			ProbeInterval:           300 * time.Millisecond,
			ProbeTimeout:            150 * time.Millisecond,
			IndirectChecks:          2,
			SuspicionMult:           3,
			SuspicionMaxTimeoutMult: 4,
			RetransmitMult:          3,
			GossipInterval:          50 * time.Millisecond,
			GossipNodes:             3,
			GossipToTheDeadTime:     10 * time.Second,
			PushPullInterval:        5 * time.Second,
			TCPTimeout:              2 * time.Second,
			AwarenessMaxMultiplier:  8,
			RejoinInterval:          time.Second,
		},
	}
	want[""] = want["wan"]
	for name, w := range want {
		got, err := ProfileTuning(name)
		if err != nil {
			t.Fatalf("profile %q: %v", name, err)
		}
		if got != w {
			t.Errorf("profile %q:\n got %+v\nwant %+v", name, got, w)
		}
		if err := got.validate(); err != nil {
			t.Errorf("profile %q does not validate: %v", name, err)
		}
	}
	// Each call returns a copy: changing it changes no profile.
	lan, _ := ProfileTuning("lan")
	lan.ProbeInterval = time.Hour
	if again, _ := ProfileTuning("lan"); again != want["lan"] {
		t.Error("ProfileTuning returned a profile the caller could change")
	}
}

// TestMetricsTwiceOnOneRegistry: a second Mesh on one registry is a
// programming error that surfaces as an error naming the package, not as a
// panic.
func TestMetricsTwiceOnOneRegistry(t *testing.T) {
	c := newCluster(t)
	reg := prometheus.NewRegistry()
	if _, err := New(c.options("a"), nil, reg); err != nil {
		t.Fatal(err)
	}
	_, err := New(c.options("b"), nil, reg)
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) || !strings.HasPrefix(err.Error(), "mesh: ") {
		t.Fatalf("second Mesh: %v", err)
	}
}
