//go:build linux

package dns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UDP on Linux moves up to udpBatch datagrams per system call each way:
// recvmmsg takes whatever is queued and sendmmsg sends the batch's answers,
// as gdnsd and Knot do. Both are non-blocking (MSG_DONTWAIT) raw system
// calls, recvmmsg inside RawConn.Read: only when the socket runs dry does
// the goroutine wait in the runtime's poller, like any Go network read;
// sendmmsg waits there only if the send buffer is full. Compared with
// ReadFromUDP and WriteToUDP per datagram, that saves per query two system
// call entries and the fd mutex and poller bookkeeping around each, and
// waits less often: together more CPU than parsing and answering the query
// (see the package doc).
//
// Waiting in the kernel instead, in a blocking recvmmsg as gdnsd does
// (after a non-blocking one found nothing), was measured and cost more:
// with every P's goroutine in a system call, sysmon wakes every 20µs to
// take the Ps back and starts a spinning M for each (4.9 µs of CPU per
// query where the poller's way took 3.7 µs, in the same run).
//
// Other ways to wait were measured beside this one and gdnsd, in the same
// runs on the 2-core bench machine (commit 1303264 has them behind an
// environment variable, and scripts/bench-exp; none is kept):
//
//   - Spinning: up to 4 or 16 more MSG_DONTWAIT recvmmsg before parking.
//     Spin:16 made 73-75% of gdnsd's q/s where this code made 88-89%;
//     spin:4 78-100% where it made 79-107%. The spin burns the CPU the
//     clients and the other socket's reader need.
//   - Sleeping in the kernel while keeping the P: a raw (no entersyscall)
//     ppoll of 20 µs to 1 ms before the poller. The poller's epoll_pwait
//     and futex calls go (130k and 13k per 5 s to 0.7k and none), system
//     calls per query fall from 0.27-0.33 to 0.17-0.21 (gdnsd 0.22), and
//     batches grow (12 to 14-16 answers per sendmmsg), but the CPU per
//     query does not: the wait's cost is the sleep and wake-up (the context
//     switch), which ppoll pays as the poller did (8% of the CPU either
//     way) and gdnsd pays inside its blocking recvmmsg. What it saves is
//     the runtime's user time in the wait: 3.5% of the CPU went to 1.6%,
//     about 0.05 µs per query, within the rounds' noise. Q/s: 72-107% of
//     gdnsd where this code made 79-107%, in the same rounds. It would
//     also starve the node's other goroutines under a light DNS load: a
//     reader woken before each timeout keeps its P until sysmon preempts
//     it (10 ms).
//   - The same ppoll through Syscall, releasing the P: 56-59% of gdnsd
//     where this code made 88-89% (sysmon retakes the P after 20 µs, as
//     with a blocking recvmmsg).
//   - One socket and reader instead of one per P: 69-95% where this code
//     made 79-107%, with less CPU per query (larger batches) but one
//     core's worth of reading; four: 88-93% (90-97%).
//
// SO_BUSY_POLL does nothing on loopback (busy polling needs the NAPI id a
// NIC driver gives its packets) and was not tried.

const (
	// udpBatch is the most datagrams one recvmmsg or sendmmsg moves.
	udpBatch = 32
	// udpInSize is the most of a query read. Real queries are far
	// smaller (one question and an OPT record; padding makes them 128-byte
	// multiples); a larger datagram is cut, and answered by its start
	// (handleCut: FORMERR at best).
	udpInSize = 4096
)

// udpSocket is one UDP socket. serveUDP owns it and closes it when it
// returns; wake makes it return.
type udpSocket struct {
	c  *net.UDPConn
	rc syscall.RawConn
	// fd is c's descriptor, for the raw system calls of serveUDP, which
	// alone closes c: so fd stays c's while serveUDP runs.
	fd int
}

func newUDPSocket(c *net.UDPConn) (*udpSocket, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("dns: udp socket: %w", err)
	}
	u := &udpSocket{c: c, rc: rc}
	if err := rc.Control(func(fd uintptr) {
		u.fd = int(fd)
		// No path MTU discovery: answers leave without DF and the
		// socket keeps no per-destination MTU state, so a forged ICMP
		// "fragmentation needed" cannot shrink our answers or make them
		// fail (what BIND, Knot and gdnsd do). One option per family;
		// an IPv6 socket serving IPv4-mapped clients takes both.
		_ = unix.SetsockoptInt(u.fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_OMIT)
		_ = unix.SetsockoptInt(u.fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_OMIT)
	}); err != nil {
		c.Close()
		return nil, fmt.Errorf("dns: udp socket: %w", err)
	}
	return u, nil
}

// wake makes a serveUDP waiting in the poller return once the server is
// stopping: shutting down the reading side makes the socket readable, and
// readFn, called again, sees the server stopping. Control keeps fd from
// being closed under it, should serveUDP have returned already.
func (u *udpSocket) wake() {
	_ = u.rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RD) })
}

// close closes a socket whose serveUDP never ran.
func (u *udpSocket) close() { u.c.Close() }

// udpLoop is one socket's serving state: the datagrams read, the client
// addresses and the answers, all reused for every batch, and the poller
// callbacks, made once so that waiting allocates nothing.
type udpLoop struct {
	s *Server
	u *udpSocket
	t *tally

	rmsg  [udpBatch]unix.Mmsghdr
	riov  [udpBatch]unix.Iovec
	names [udpBatch]unix.RawSockaddrInet6 // large enough for IPv4 too
	smsg  [udpBatch]unix.Mmsghdr
	siov  [udpBatch]unix.Iovec
	in    []byte // udpBatch slots of udpInSize
	out   []byte // udpBatch slots of outSlot
	// outSlot is each answer's room: the largest UDP answer plus the room
	// an answer may take before finish() cuts it back. An answer that needs
	// more (a static RRset far over the limit, which finish drops anyway)
	// grows out of it, costing an allocation, nothing else.
	outSlot int

	// The last system call's result, and what sendmmsg is to send, for
	// the callbacks.
	n, sendOff, sendEnd int
	errno               unix.Errno
	readFn, writeFn     func(fd uintptr) bool
}

func newUDPLoop(s *Server, u *udpSocket) *udpLoop {
	l := &udpLoop{s: s, u: u, t: s.m.newTally(trUDP), outSlot: s.opts.MaxUDPSize + 4096}
	l.in = make([]byte, udpBatch*udpInSize)
	l.out = make([]byte, udpBatch*l.outSlot)
	for i := range l.rmsg {
		l.riov[i].Base = &l.in[i*udpInSize]
		l.riov[i].SetLen(udpInSize)
		h := &l.rmsg[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&l.names[i]))
		h.Iov = &l.riov[i]
		h.SetIovlen(1)
	}
	// Called by the poller until they return true: at once, then each time
	// the socket becomes ready. A stopping server counts as done: wake
	// makes the socket readable, but a non-blocking recvmmsg on a socket
	// shut down for reading still says EAGAIN.
	l.readFn = func(fd uintptr) bool {
		l.recvmmsg(int(fd))
		return l.errno != unix.EAGAIN || s.stopping()
	}
	l.writeFn = func(fd uintptr) bool {
		l.sendmmsg(int(fd))
		return l.errno != unix.EAGAIN
	}
	return l
}

// recv reads up to udpBatch datagrams into l.n, waiting for the first in
// the poller if none is queued. (RawConn.Read calls readFn at once: a
// recvmmsg of our own before it would only double the failed call when the
// socket is dry, and it cannot be skipped: a datagram arriving between a
// failed call and the poller's arming would wait for the next one.)
func (l *udpLoop) recv() error {
	if err := l.u.rc.Read(l.readFn); err != nil {
		return err
	}
	if l.errno != 0 {
		l.n = 0
		return l.errno
	}
	return nil
}

func (l *udpLoop) recvmmsg(fd int) {
	for i := range l.rmsg {
		l.rmsg[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		l.rmsg[i].Hdr.Flags = 0
	}
	for {
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&l.rmsg[0])),
			udpBatch, unix.MSG_DONTWAIT, 0, 0)
		if errno != unix.EINTR {
			l.n, l.errno = int(n), errno
			return
		}
	}
}

// query returns datagram i, its sender, and whether it was cut short by
// the buffer; ok is false for a sender that is not IP.
func (l *udpLoop) query(i int) (pkt []byte, client netip.Addr, cut, ok bool) {
	m := &l.rmsg[i]
	cut = m.Hdr.Flags&unix.MSG_TRUNC != 0
	sa := &l.names[i]
	switch sa.Family {
	case unix.AF_INET:
		client = netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(sa)).Addr)
	case unix.AF_INET6:
		client = netip.AddrFrom16(sa.Addr).Unmap()
	default:
		return nil, client, cut, false
	}
	off := i * udpInSize
	return l.in[off : off+int(m.Len)], client, cut, true
}

// outBuf is the room for the answer to datagram i.
func (l *udpLoop) outBuf(i int) []byte {
	off := i * l.outSlot
	return l.out[off:off:(off + l.outSlot)]
}

// queue makes resp, the answer to datagram i, the j-th of the batch to send.
func (l *udpLoop) queue(j, i int, resp []byte) {
	l.siov[j].Base = &resp[0]
	l.siov[j].SetLen(len(resp))
	h := &l.smsg[j].Hdr
	h.Name = l.rmsg[i].Hdr.Name
	h.Namelen = l.rmsg[i].Hdr.Namelen
	h.Iov = &l.siov[j]
	h.SetIovlen(1)
}

// send writes the n queued answers. sendmmsg stops at the first datagram
// that fails and reports only a failure of the first; that one is skipped
// and the rest sent. A full send buffer is waited out in the poller.
func (l *udpLoop) send(n int) error {
	var first error
	l.sendOff, l.sendEnd = 0, n
	for l.sendOff < n {
		if l.sendmmsg(l.u.fd); l.errno == unix.EAGAIN {
			if err := l.u.rc.Write(l.writeFn); err != nil {
				return err
			}
		}
		if l.errno != 0 {
			if first == nil {
				first = l.errno
			}
			l.sendOff++
			continue
		}
		l.sendOff += l.n
	}
	return first
}

func (l *udpLoop) sendmmsg(fd int) {
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&l.smsg[l.sendOff])),
			uintptr(l.sendEnd-l.sendOff), unix.MSG_DONTWAIT, 0, 0)
		if errno != unix.EINTR {
			l.n, l.errno = int(r), errno
			return
		}
	}
}

func (s *Server) serveUDP(u *udpSocket) {
	defer s.wg.Done()
	defer u.c.Close()
	l := newUDPLoop(s, u)
	for {
		err := l.recv()
		if s.stopping() {
			// After wake, and also when a flood keeps the queue full: the
			// reading side is shut down but datagrams still arrive.
			return
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("dns: udp read", "err", err)
			continue
		}
		t0 := time.Now()
		m := 0
		for i := range l.n {
			pkt, client, cut, ok := l.query(i)
			var resp []byte
			switch {
			case !ok:
				l.t.drop(dropMalformed)
			case cut:
				resp = s.handleCut(l.t, pkt, client, l.outBuf(i))
			default:
				resp = s.handleTally(l.t, pkt, client, l.outBuf(i))
			}
			if len(resp) == 0 {
				continue
			}
			l.queue(m, i, resp)
			m++
		}
		if m == 0 {
			continue
		}
		if err := l.send(m); err != nil {
			s.log.Debug("dns: udp write", "err", err)
		}
		l.t.observe(time.Since(t0), m)
	}
}
