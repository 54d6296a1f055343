//go:build linux

package testkit

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// listenUDPIn opens a UDP socket in network namespace ns: a socket stays
// in the namespace it was made in, whichever thread uses it later, so only
// the making needs a thread switched into ns (locked to its goroutine, and
// switched back; a thread that cannot be switched back dies with the
// goroutine instead of serving others).
func listenUDPIn(t *testing.T, ns string, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	type result struct {
		c   *net.UDPConn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("UDP socket in %s: %v", ns, r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	return r.c
}

// Two namespaces joined by a DelayNet: a UDP round trip takes at least
// the two one-way delays, follows a change made at run time, and a packet
// for an address of no endpoint is dropped and counted.
func TestDelayNet(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (TUN devices, network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2 (ip)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no TUN: %v", err)
	}
	var nss []string
	for i := range 2 {
		ns := fmt.Sprintf("tkdn%d-%d", os.Getpid()%100000, i)
		if err := exec.Command("ip", "netns", "add", ns).Run(); err != nil {
			t.Skipf("network namespaces unavailable: %v", err)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		runIP(t, "ip", "-n", ns, "link", "set", "lo", "up")
		nss = append(nss, ns)
	}
	a := netip.MustParsePrefix("10.74.0.1/24")
	b := netip.MustParsePrefix("10.74.0.2/24")
	d := NewDelayNet(t, []DelayEndpoint{{nss[0], a}, {nss[1], b}})

	ca := listenUDPIn(t, nss[0], netip.AddrPortFrom(a.Addr(), 0))
	cb := listenUDPIn(t, nss[1], netip.AddrPortFrom(b.Addr(), 0))
	done := make(chan struct{})
	t.Cleanup(func() { cb.Close(); <-done })
	go func() { // the echo, until cb is closed
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := cb.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = cb.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	to := netip.AddrPortFrom(b.Addr(), uint16(cb.LocalAddr().(*net.UDPAddr).Port))
	rtt := func(dst netip.AddrPort) (time.Duration, bool) {
		start := time.Now()
		if _, err := ca.WriteToUDPAddrPort([]byte("ping"), dst); err != nil {
			t.Fatal(err)
		}
		_ = ca.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 64)
		if _, _, err := ca.ReadFromUDPAddrPort(buf); err != nil {
			return 0, false
		}
		return time.Since(start), true
	}

	d.SetDelay(0, 1, 30*time.Millisecond)
	d.SetDelay(1, 0, 20*time.Millisecond)
	for range 3 {
		r, ok := rtt(to)
		if !ok {
			t.Fatal("no echo through the delayed net")
		}
		if r < 50*time.Millisecond {
			t.Errorf("round trip %v with 30 ms + 20 ms of delay", r)
		}
	}
	// Undelayed: some round trip soon comes well below the delay (a
	// loaded machine may slow single ones).
	d.SetLinkDelay(0, 1, 0)
	WaitFor(t, 10*time.Second, "a fast round trip once the delay is off", func() bool {
		r, ok := rtt(to)
		return ok && r < 25*time.Millisecond
	})
	before := d.Stats().Unknown
	if _, ok := rtt(netip.MustParseAddrPort("10.74.0.9:9")); ok {
		t.Error("an answer from an address of no endpoint")
	}
	if d.Stats().Unknown <= before {
		t.Errorf("the packet for no endpoint was not counted: %+v", d.Stats())
	}
}
