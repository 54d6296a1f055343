//go:build !linux

package dns

import (
	"errors"
	"net"
	"time"
)

// udpSocket is a UDP socket served through the runtime's poller, one
// datagram per system call. (Linux has the batched version.)
type udpSocket struct {
	c *net.UDPConn
}

func newUDPSocket(c *net.UDPConn) (*udpSocket, error) { return &udpSocket{c: c}, nil }

// wake makes serveUDP return.
func (u *udpSocket) wake() { u.c.Close() }

// close closes a socket whose serveUDP never ran.
func (u *udpSocket) close() { u.c.Close() }

func (s *Server) serveUDP(u *udpSocket) {
	defer s.wg.Done()
	c := u.c
	t := s.m.newTally(trUDP)
	in := make([]byte, 65536)
	out := make([]byte, 0, outBufSize)
	for {
		n, from, err := c.ReadFromUDPAddrPort(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.stopping() {
				return
			}
			s.log.Debug("dns: udp read", "err", err)
			continue
		}
		t0 := time.Now()
		resp := s.handleTally(t, in[:n], from.Addr().Unmap(), out)
		if resp == nil {
			continue
		}
		if _, err := c.WriteToUDPAddrPort(resp, from); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Debug("dns: udp write", "to", from.String(), "err", err)
		}
		t.observe(time.Since(t0), 1)
	}
}
