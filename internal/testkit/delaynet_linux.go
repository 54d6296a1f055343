//go:build linux

package testkit

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// DelayNet is a link emulator for tests: an IPv4 network whose every
// packet passes through the test process, which holds it for a one-way
// delay of its own per ordered pair of endpoints before delivering it.
// It stands in for tc netem where the kernel has no sch_netem.
//
// Each endpoint is a TUN device (no packet information header) with one
// address of the network's prefix, in a network namespace of the caller's
// ("" is the test process's own). The kernel routes the prefix to the
// device, so what an endpoint sends to another endpoint's address is
// read here and written to that endpoint's device once its delay has
// passed. Each pair has its own FIFO queue, so a constant delay keeps the
// order of packets; a delay lowered at run time applies to packets sent
// after the change, behind those already queued (as netem does). A packet
// for an address that is no endpoint's, or that is not IPv4, is dropped;
// so is one that finds its pair's queue full.
//
// Every goroutine belongs to the DelayNet and stops, and every device goes
// away with its file, when the test ends. The caller's namespaces must
// outlive it: create them (and register their removal with t.Cleanup)
// before calling NewDelayNet, whose cleanup then runs first.
type DelayNet struct {
	n     int
	devs  []*os.File
	names []string
	addrs []netip.Prefix
	index map[[4]byte]int
	delay []atomic.Int64 // nanoseconds, [from*n+to]
	queue []chan packet  // [from*n+to]
	stop  chan struct{}
	wg    sync.WaitGroup

	// what happened to the packets read (see Stats)
	forwarded, unknown, full, lost atomic.Int64
}

type packet struct {
	b   []byte
	due time.Time
}

// DelayEndpoint is one endpoint of a DelayNet: the namespace its device
// goes to ("" for the test process's own) and its address with the
// network's prefix length (e.g. 10.76.1.1/24).
type DelayEndpoint struct {
	Netns string
	Addr  netip.Prefix
}

// DelayQueueLen bounds each pair's queue, in packets: at a few thousand
// packets a test is flooding, not measuring, and a bounded queue keeps a
// stuck reader from growing the test process without limit.
const DelayQueueLen = 4096

// NewDelayNet creates a TUN device per endpoint, moves it to the
// endpoint's namespace with its address and brings it up, and starts
// forwarding with no delay. It needs CAP_NET_ADMIN, /dev/net/tun and
// iproute2 (ip); the caller skips the test when they are missing.
func NewDelayNet(t testing.TB, eps []DelayEndpoint) *DelayNet {
	t.Helper()
	n := len(eps)
	d := &DelayNet{
		n:     n,
		index: make(map[[4]byte]int, n),
		delay: make([]atomic.Int64, n*n),
		queue: make([]chan packet, n*n),
		stop:  make(chan struct{}),
	}
	t.Cleanup(func() {
		d.close()
		t.Logf("delaynet: %+v", d.Stats())
	})
	for i, ep := range eps {
		if !ep.Addr.Addr().Is4() {
			t.Fatalf("delaynet: endpoint %d: %v is not IPv4", i, ep.Addr)
		}
		a := ep.Addr.Addr().As4()
		if _, dup := d.index[a]; dup {
			t.Fatalf("delaynet: address %v twice", ep.Addr)
		}
		d.index[a] = i
		f, name, err := openTUN()
		if err != nil {
			t.Fatalf("delaynet: %v", err)
		}
		d.devs = append(d.devs, f)
		d.names = append(d.names, name)
		d.addrs = append(d.addrs, ep.Addr)
		ip := []string{"ip"}
		if ep.Netns != "" {
			runIP(t, "ip", "link", "set", name, "netns", ep.Netns)
			ip = append(ip, "-n", ep.Netns)
		}
		runIP(t, append(ip, "addr", "add", ep.Addr.String(), "dev", name)...)
		runIP(t, append(ip, "link", "set", name, "up")...)
	}
	for from := range n {
		for to := range n {
			if from == to {
				continue // the kernel delivers an endpoint's own address locally
			}
			q := make(chan packet, DelayQueueLen)
			d.queue[from*n+to] = q
			d.wg.Go(func() { d.deliver(q, d.devs[to]) })
		}
	}
	for i := range n {
		d.wg.Go(func() { d.read(i) })
	}
	return d
}

// openTUN creates a TUN device in this namespace and returns its file
// and name. The kernel names it (dn0, dn1, ...: the first free one), so
// that tests and processes running at the same time never ask for the
// same name. The file is non-blocking so that the runtime poller serves
// it and Close ends a pending Read; the device lives as long as the file.
func openTUN() (*os.File, string, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq("dn%d")
	if err == nil {
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("TUN device: %w", err)
	}
	name := ifr.Name()
	return os.NewFile(uintptr(fd), "tun:"+name), name, nil
}

func runIP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Addr is endpoint i's address.
func (d *DelayNet) Addr(i int) netip.Addr { return d.addrs[i].Addr() }

// Device is the name of endpoint i's TUN device (in its namespace).
func (d *DelayNet) Device(i int) string { return d.names[i] }

// SetDelay sets the one-way delay of the packets endpoint from sends to
// endpoint to; it may change at any time.
func (d *DelayNet) SetDelay(from, to int, delay time.Duration) {
	d.delay[from*d.n+to].Store(int64(delay))
}

// SetLinkDelay sets the delay both ways between endpoints i and j (the
// round trip is twice it).
func (d *DelayNet) SetLinkDelay(i, j int, delay time.Duration) {
	d.SetDelay(i, j, delay)
	d.SetDelay(j, i, delay)
}

// DelayStats counts a DelayNet's packets.
type DelayStats struct {
	Forwarded int64 // delivered
	Unknown   int64 // dropped: not IPv4, or for no endpoint's address
	Full      int64 // dropped: the pair's queue was full
	Lost      int64 // a read or a delivery failed
}

// Stats returns the counts so far.
func (d *DelayNet) Stats() DelayStats {
	return DelayStats{d.forwarded.Load(), d.unknown.Load(), d.full.Load(), d.lost.Load()}
}

// read forwards the packets endpoint i sends until its device is closed.
func (d *DelayNet) read(i int) {
	buf := make([]byte, 1<<16)
	for {
		m, err := d.devs[i].Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				select {
				case <-d.stop:
				default:
					// A read error other than the close is no state a
					// test can get into; note it as a drop and go on
					// after a pause rather than spin.
					d.lost.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
			}
			return
		}
		p := buf[:m]
		if m < 20 || p[0]>>4 != 4 {
			d.unknown.Add(1)
			continue
		}
		to, ok := d.index[[4]byte(p[16:20])]
		if !ok || to == i {
			d.unknown.Add(1)
			continue
		}
		pk := packet{b: append([]byte(nil), p...), due: time.Now().Add(time.Duration(d.delay[i*d.n+to].Load()))}
		select {
		case d.queue[i*d.n+to] <- pk:
		default:
			d.full.Add(1)
		}
	}
}

// deliver writes the packets of one pair's queue to the receiving device
// when they are due.
func (d *DelayNet) deliver(q <-chan packet, dev *os.File) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		var pk packet
		select {
		case pk = <-q:
		case <-d.stop:
			return
		}
		if wait := time.Until(pk.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-d.stop:
				return
			}
		}
		if _, err := dev.Write(pk.b); err != nil {
			// Closed (the net is stopping) or refused by the kernel
			// (the device is down): the packet is lost, as on a wire.
			d.lost.Add(1)
			continue
		}
		d.forwarded.Add(1)
	}
}

// close stops every goroutine and closes every device (which removes it).
func (d *DelayNet) close() {
	close(d.stop)
	for _, f := range d.devs {
		f.Close()
	}
	d.wg.Wait()
}
