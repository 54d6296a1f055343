package testkit

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
)

// handedOut is every port number PickPort returned in this process. The
// kernel may hand a port that was just closed to the next Listen(":0"), so
// two calls could otherwise return the same port before either caller binds
// it: a CI run met two listeners of one node on one port. Port numbers are
// remembered regardless of the address, because a program may bind a
// port on every address.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// PickPort returns a TCP port on ip that was free a moment ago, and free
// for UDP as well when udp is set. It never returns the same port twice in
// one process. Tests use [FreePort] and [FreeUDPTCPPort]; PickPort is for
// code that has no testing.TB: shared test fixtures started once per test
// binary, and the programs under scripts/.
//
// The port is free only until someone else binds it: hand it to the
// program under test right away.
func PickPort(ip string, udp bool) (int, error) {
	var lastErr error
	for range 100 {
		port, err := pickOnce(ip, udp)
		if err != nil {
			lastErr = err
			continue
		}
		handedOut.Lock()
		taken := handedOut.ports[port]
		handedOut.ports[port] = true
		handedOut.Unlock()
		if !taken {
			return port, nil
		}
		lastErr = errors.New("kernel kept offering ports already handed out")
	}
	return 0, fmt.Errorf("testkit: no free port on %s: %w", ip, lastErr)
}

// pickOnce asks the kernel for a TCP port on ip and, when udp is set,
// checks the same port is free for UDP while the TCP listener still holds
// it.
func pickOnce(ip string, udp bool) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	if udp {
		c, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err != nil {
			return 0, err
		}
		c.Close()
	}
	return port, nil
}

// FreePort returns a TCP port on ip that was free a moment ago and that no
// other caller in this test binary got.
func FreePort(t testing.TB, ip string) int {
	t.Helper()
	port, err := PickPort(ip, false)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// FreeUDPTCPPort is FreePort for a port that is free for both UDP and TCP,
// as DNS and memberlist need.
func FreeUDPTCPPort(t testing.TB, ip string) int {
	t.Helper()
	port, err := PickPort(ip, true)
	if err != nil {
		t.Fatal(err)
	}
	return port
}
