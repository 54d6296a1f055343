//go:build linux

package dns

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortSupported: several UDP sockets on one port, the kernel spreading
// packets over them by flow hash, one reader goroutine each — no shared
// socket lock and no goroutine hand-off per packet.
const reusePortSupported = true

func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
