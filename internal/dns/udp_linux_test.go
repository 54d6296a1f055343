//go:build linux

package dns

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestUDPNoPathMTUDiscovery: answers leave without DF and no forged ICMP
// can shrink them (the socket keeps no path MTU).
func TestUDPNoPathMTUDiscovery(t *testing.T) {
	ts := startServer(t, "", fiveNodes(), nil)
	for i, u := range ts.udpSockets() {
		var v int
		var gerr error
		if err := u.rc.Control(func(fd uintptr) {
			v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER)
		}); err != nil {
			t.Fatal(err)
		}
		if gerr != nil || v != unix.IP_PMTUDISC_OMIT {
			t.Errorf("socket %d: IP_MTU_DISCOVER = %d (%v), want IP_PMTUDISC_OMIT", i, v, gerr)
		}
	}
}

func (ts *testServer) udpSockets() []*udpSocket {
	ts.life.Lock()
	defer ts.life.Unlock()
	return ts.Server.udp
}
