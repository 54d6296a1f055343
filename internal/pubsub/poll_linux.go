//go:build linux

package pubsub

import (
	"errors"
	"fmt"
	"syscall"
)

// poller watches idle websockets for readability with one epoll instance,
// so that an idle connection holds no goroutine (and no goroutine stack)
// at all: the runtime's own poller can only wake a goroutine parked in a
// read. Each socket is armed one-shot: one readiness report starts one
// reader goroutine (readReady), which reads what is there and re-arms the
// socket. The socket stays registered with the runtime's poller too; the two
// do not interfere (Go reads first and parks only on EAGAIN).
//
// Events carry the connection id, never a descriptor or pointer: a report
// for a connection that has closed meanwhile finds nothing and is ignored.
type poller struct {
	p      *PubSub
	epfd   int
	wakeR  int // pipe: a byte here ends run
	wakeW  int
	closed bool
}

const pollEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

// wakeID is the event id of the wake pipe; connection ids start at 1.
const wakeID = 0

func newPoller(p *PubSub) (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setID(&ev, wakeID)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, fds[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(fds[0])
		syscall.Close(fds[1])
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	return &poller{p: p, epfd: epfd, wakeR: fds[0], wakeW: fds[1]}, nil
}

func setID(ev *syscall.EpollEvent, id uint64) {
	ev.Fd = int32(uint32(id))
	ev.Pad = int32(uint32(id >> 32))
}

func eventID(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// ctl registers (or re-arms) c's socket. Control holds the descriptor
// open for the call, so a concurrent close cannot make the number refer
// to another file.
func (pl *poller) ctl(op int, c *conn) bool {
	ok := false
	err := c.raw.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: pollEvents}
		setID(&ev, c.id)
		ok = syscall.EpollCtl(pl.epfd, op, int(fd), &ev) == nil
	})
	return err == nil && ok
}

func (pl *poller) add(c *conn) bool   { return pl.ctl(syscall.EPOLL_CTL_ADD, c) }
func (pl *poller) rearm(c *conn) bool { return pl.ctl(syscall.EPOLL_CTL_MOD, c) }

// run reports readiness until wake. A closed socket leaves the epoll set by
// itself (the kernel removes it on close).
func (pl *poller) run() {
	defer pl.p.bg.Done()
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(pl.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			pl.p.log.Error("pubsub: epoll_wait failed; websockets are no longer read", "err", err)
			return
		}
		for i := range events[:n] {
			id := eventID(&events[i])
			if id == wakeID {
				return
			}
			c := pl.p.lookup(id)
			if c == nil {
				continue
			}
			pl.p.wg.Add(1)
			go c.readReady()
		}
	}
}

// wake ends run.
func (pl *poller) wake() {
	_, _ = syscall.Write(pl.wakeW, []byte{1})
}

// close releases the descriptors; run must have returned.
func (pl *poller) close() {
	if pl.closed {
		return
	}
	pl.closed = true
	syscall.Close(pl.epfd)
	syscall.Close(pl.wakeR)
	syscall.Close(pl.wakeW)
}
