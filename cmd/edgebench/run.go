package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type benchConfig struct {
	label     string
	proto     string // "edgenode" (default) or "centrifugo"
	wsURL     string
	adminURL  string
	token     string
	tenant    string
	prefix    string
	n         int
	channels  int
	messages  int
	rate      float64
	size      int
	pid       int
	conc      int
	perSource int
	settle    time.Duration
	wait      time.Duration

	cpuProfile    string
	serverProfile string
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var c benchConfig
	fs.StringVar(&c.label, "label", "", "first column of the output line (default: derived)")
	fs.StringVar(&c.proto, "proto", "edgenode", "server protocol: edgenode or centrifugo (token: its HTTP API key)")
	fs.StringVar(&c.wsURL, "ws", "wss://127.0.0.1:8443/ws", "websocket URL")
	fs.StringVar(&c.adminURL, "admin", "http://127.0.0.1:9090", "admin listener URL (publish API)")
	fs.StringVar(&c.token, "token", "", "admin bearer token")
	tokenFile := fs.String("token-file", "", "file holding the admin bearer token (e.g. data/publish.secret)")
	fs.StringVar(&c.tenant, "tenant", "demo", "tenant (its bench threads must be public)")
	fs.StringVar(&c.prefix, "thread-prefix", "bench-", "thread names are PREFIX0, PREFIX1, ...")
	fs.IntVar(&c.n, "n", 1000, "subscribers")
	fs.IntVar(&c.channels, "channels", 1, "channels (subscriber i on channel i mod K)")
	fs.IntVar(&c.messages, "m", 100, "messages to publish")
	fs.Float64Var(&c.rate, "rate", 10, "messages per second")
	fs.IntVar(&c.size, "size", 100, "approximate message data size in bytes")
	fs.IntVar(&c.pid, "server-pid", 0, "server process id, for RSS and CPU from /proc")
	fs.IntVar(&c.conc, "c", 64, "concurrent connection attempts")
	fs.IntVar(&c.perSource, "per-source", 200, "connections per source address (127.1.x.y), under the server's per-address limit")
	fs.DurationVar(&c.settle, "settle", 3*time.Second, "wait after connecting before reading the server's RSS")
	fs.DurationVar(&c.wait, "wait", 15*time.Second, "how long to wait for stragglers after the last publish")
	header := fs.Bool("header", true, "print the header line")
	cpuProfile := fs.String("cpuprofile", "", "write the load tool's CPU profile of the publish phase here")
	fs.StringVar(&c.serverProfile, "server-cpuprofile", "", "write the server's CPU profile of the publish phase here (from the admin listener's /debug/pprof/profile)")
	_ = fs.Parse(args)
	c.cpuProfile = *cpuProfile
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return err
		}
		c.token = strings.TrimSpace(string(b))
	}
	if *header {
		printHeader()
	}
	r, err := runBench(c)
	if err != nil {
		return err
	}
	printRow(r)
	return nil
}

type result struct {
	cfg                 benchConfig
	connectTime         time.Duration
	connected, failed   int
	expected, delivered int64
	dups, errFrames     int64
	p50, p99, max       time.Duration
	kibPerConn          float64 // -1: unknown
	cpuPerDelivery      float64 // microseconds; -1: unknown
	publishErrs         int
	publishDur          time.Duration
	lost                int64  // connections that ended before the bench closed them
	lostErr             string // the first one's error
}

func printHeader() {
	fmt.Printf("%-16s %6s %6s %6s %6s %9s %8s %21s %5s %9s %9s %9s %13s %12s\n",
		"run", "N", "chans", "msgs", "msg/s", "connect", "conn/s", "delivered/expected", "dup", "p50", "p99", "max", "srv KiB/conn", "srv µs/deliv")
}

func printRow(r result) {
	label := r.cfg.label
	if label == "" {
		label = "1 channel"
		if r.cfg.channels > 1 {
			label = strconv.Itoa(r.cfg.channels) + " channels"
		}
	}
	kib, cpu := "?", "?"
	if r.kibPerConn >= 0 {
		kib = fmt.Sprintf("%.1f", r.kibPerConn)
	}
	if r.cpuPerDelivery >= 0 {
		cpu = fmt.Sprintf("%.1f", r.cpuPerDelivery)
	}
	conn := fmt.Sprintf("%.0f", float64(r.connected)/r.connectTime.Seconds())
	rate := r.cfg.rate // achieved, when the publisher could not keep up
	if r.publishDur > 0 && r.cfg.messages > 1 {
		rate = min(rate, float64(r.cfg.messages-1)/r.publishDur.Seconds())
	}
	fmt.Printf("%-16s %6d %6d %6d %6.0f %8.1fs %8s %21s %5d %9s %9s %9s %13s %12s\n",
		label, r.cfg.n, r.cfg.channels, r.cfg.messages, rate, r.connectTime.Seconds(), conn,
		fmt.Sprintf("%d/%d", r.delivered, r.expected), r.dups, ms(r.p50), ms(r.p99), ms(r.max), kib, cpu)
	if r.failed > 0 || r.publishErrs > 0 || r.errFrames > 0 || r.lost > 0 {
		fmt.Printf("%-16s failed connections %d, failed publishes %d, error frames %d, connections ended by the server %d %s\n",
			"", r.failed, r.publishErrs, r.errFrames, r.lost, r.lostErr)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/1e6) }

// subscriber is one websocket client.
type subscriber struct {
	ws      *websocket.Conn
	channel int
	seen    []uint64 // bitset of message sequence numbers
	lat     []int32  // microseconds
	dups    int64
	errs    int64

	centrifugo bool // frames are Centrifugo's: lines, pushes, pings
}

func runBench(c benchConfig) (result, error) {
	r := result{cfg: c, kibPerConn: -1, cpuPerDelivery: -1}
	if c.channels < 1 || c.n < 1 || c.messages < 0 || c.rate <= 0 {
		return r, errors.New("need n >= 1, channels >= 1, m >= 0, rate > 0")
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && uint64(c.n)+64 > lim.Cur {
		return r, fmt.Errorf("%d connections need more open files than the limit %d", c.n, lim.Cur)
	}
	u, err := parseWSURL(c.wsURL)
	if err != nil {
		return r, err
	}
	rss0 := readRSS(c.pid)

	// Connect and subscribe everyone.
	subs := make([]*subscriber, c.n)
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, c.conc)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range c.n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s, err := connect(u, c, i)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			subs[i] = s
		}()
	}
	wg.Wait()
	r.connectTime = time.Since(t0)
	r.failed = int(failed.Load())
	r.connected = c.n - r.failed
	if r.failed > 0 {
		fmt.Fprintf(os.Stderr, "edgebench: %d connections failed, first: %v\n", r.failed, firstErr.Load())
	}
	perChannel := make([]int64, c.channels)
	for _, s := range subs {
		if s != nil {
			perChannel[s.channel]++
		}
	}
	if c.pid > 0 && rss0 > 0 && r.connected > 0 {
		time.Sleep(c.settle)
		if rss1 := readRSS(c.pid); rss1 > 0 {
			r.kibPerConn = float64(rss1-rss0) / float64(r.connected)
		}
	}

	// Read everything that arrives.
	var delivered, lost atomic.Int64
	var closing atomic.Bool
	var lostErr atomic.Value
	var readers sync.WaitGroup
	for _, s := range subs {
		if s == nil {
			continue
		}
		s.seen = make([]uint64, (c.messages+63)/64)
		s.lat = make([]int32, 0, c.messages/max(1, c.channels)+1)
		readers.Add(1)
		go func() {
			defer readers.Done()
			err := s.read(c.messages, &delivered)
			if !closing.Load() {
				lost.Add(1)
				lostErr.CompareAndSwap(nil, fmt.Sprintf("(first: %v)", err))
			}
		}()
	}

	// Publish at the rate.
	for j := range c.messages {
		r.expected += perChannel[j%c.channels]
	}
	cpu0 := readCPU(c.pid)
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return r, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return r, err
		}
	}
	var profDone chan error
	if c.serverProfile != "" {
		// The server samples for as long as the publishing lasts.
		secs := max(1, int(float64(c.messages)/c.rate+0.5))
		profDone = make(chan error, 1)
		go func() { profDone <- fetchServerProfile(c, secs) }()
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // Centrifugo's API: the bench's self-signed certificate
	pad := strings.Repeat("x", max(0, c.size-40))
	start := time.Now()
	for j := range c.messages {
		if d := time.Until(start.Add(time.Duration(float64(j) / c.rate * float64(time.Second)))); d > 0 {
			time.Sleep(d)
		}
		ch := c.channelName(j % c.channels)
		data := fmt.Sprintf(`{"seq":%d,"ts":%d,"pad":"%s"}`, j, time.Now().UnixNano(), pad)
		if err := publish(hc, c, ch, data); err != nil {
			r.publishErrs++
			if r.publishErrs == 1 {
				fmt.Fprintln(os.Stderr, "edgebench: publish:", err)
			}
		}
	}
	r.publishDur = time.Since(start)

	// Wait for stragglers, then stop.
	deadline := time.Now().Add(c.wait)
	for delivered.Load() < r.expected && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if c.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if profDone != nil {
		if err := <-profDone; err != nil {
			fmt.Fprintln(os.Stderr, "edgebench: server profile:", err)
		}
	}
	if cpu1 := readCPU(c.pid); cpu0 >= 0 && cpu1 >= 0 && delivered.Load() > 0 {
		r.cpuPerDelivery = (cpu1 - cpu0) * 1e6 / float64(delivered.Load())
	}
	closing.Store(true)
	for _, s := range subs {
		if s != nil {
			_ = s.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
			s.ws.Close()
		}
	}
	readers.Wait()
	r.lost = lost.Load()
	if v, ok := lostErr.Load().(string); ok {
		r.lostErr = v
	}

	var lats []int32
	for _, s := range subs {
		if s == nil {
			continue
		}
		r.dups += s.dups
		r.errFrames += s.errs
		lats = append(lats, s.lat...)
	}
	r.delivered = int64(len(lats))
	if len(lats) > 0 {
		slices.Sort(lats)
		us := func(v int32) time.Duration { return time.Duration(v) * time.Microsecond }
		r.p50 = us(lats[len(lats)/2])
		r.p99 = us(lats[min(len(lats)-1, len(lats)*99/100)])
		r.max = us(lats[len(lats)-1])
	}
	return r, nil
}

type wsTarget struct {
	url  string
	host string
	port string
}

func parseWSURL(s string) (wsTarget, error) {
	rest, ok := strings.CutPrefix(s, "wss://")
	if !ok {
		return wsTarget{}, fmt.Errorf("websocket URL %q: want wss://host:port/path", s)
	}
	hostport, _, _ := strings.Cut(rest, "/")
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return wsTarget{}, fmt.Errorf("websocket URL %q: %w", s, err)
	}
	return wsTarget{url: s, host: host, port: port}, nil
}

// sourceAddr spreads connections over 127.1.x.y (loopback) addresses.
func sourceAddr(i, perSource int) net.IP {
	k := i / max(1, perSource)
	return net.IPv4(127, 1, byte(k/250), byte(k%250+1))
}

func connect(u wsTarget, c benchConfig, i int) (*subscriber, error) {
	var laddr *net.TCPAddr
	if ip := net.ParseIP(u.host); ip != nil && ip.IsLoopback() && ip.To4() != nil {
		laddr = &net.TCPAddr{IP: sourceAddr(i, c.perSource)}
	}
	d := websocket.Dialer{
		TLSClientConfig:  &tls.Config{InsecureSkipVerify: true}, // the bench server's self-signed certificate
		HandshakeTimeout: 30 * time.Second,
		NetDialContext:   (&net.Dialer{LocalAddr: laddr, Timeout: 30 * time.Second}).DialContext,
		ReadBufferSize:   1024,
		WriteBufferSize:  256,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, resp, err := d.DialContext(ctx, u.url, nil)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			return nil, fmt.Errorf("dial: %s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	ch := i % c.channels
	_ = ws.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if c.centrifugo() {
		return connectCentrifugo(ws, c, ch)
	}
	sub, _ := json.Marshal(map[string]string{"type": "subscribe", "channel": c.channelName(ch)})
	if err := ws.WriteMessage(websocket.TextMessage, sub); err != nil {
		ws.Close()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, b, err := ws.ReadMessage()
		if err != nil {
			ws.Close()
			return nil, fmt.Errorf("waiting for subscribed: %w", err)
		}
		if bytes.Contains(b, []byte(`"type":"subscribed"`)) {
			break
		}
		if bytes.Contains(b, []byte(`"type":"error"`)) {
			ws.Close()
			return nil, fmt.Errorf("subscribe refused: %s", b)
		}
	}
	_ = ws.SetReadDeadline(time.Time{})
	return &subscriber{ws: ws, channel: ch}, nil
}

func (c benchConfig) centrifugo() bool { return c.proto == "centrifugo" }

// channelName is channel k's name: "{tenant}/{prefix}{k}" on edgenode,
// "{prefix}{k}" on Centrifugo (no namespace).
func (c benchConfig) channelName(k int) string {
	if c.centrifugo() {
		return c.prefix + strconv.Itoa(k)
	}
	return c.tenant + "/" + c.prefix + strconv.Itoa(k)
}

// connectCentrifugo sends Centrifugo's connect and subscribe commands (in
// one frame, one per line) and waits for the subscribe reply.
func connectCentrifugo(ws *websocket.Conn, c benchConfig, ch int) (*subscriber, error) {
	cmd := fmt.Sprintf("{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":%q}}", c.channelName(ch))
	if err := ws.WriteMessage(websocket.TextMessage, []byte(cmd)); err != nil {
		ws.Close()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, b, err := ws.ReadMessage()
		if err != nil {
			ws.Close()
			return nil, fmt.Errorf("waiting for subscribe reply: %w", err)
		}
		for line := range bytes.SplitSeq(b, []byte("\n")) {
			if bytes.Contains(line, []byte(`"error"`)) {
				ws.Close()
				return nil, fmt.Errorf("refused: %s", line)
			}
			if bytes.HasPrefix(line, []byte(`{"id":2,`)) {
				_ = ws.SetReadDeadline(time.Time{})
				return &subscriber{ws: ws, channel: ch, centrifugo: true}, nil
			}
		}
	}
}

var (
	seqKey = []byte(`"seq":`)
	tsKey  = []byte(`"ts":`)
)

// read records every message until the connection ends (its error). One buffer per
// subscriber, reused: the load tool should cost as little CPU as it can,
// since it shares the machine with the server.
func (s *subscriber) read(messages int, delivered *atomic.Int64) error {
	buf := make([]byte, 0, 1024)
	for {
		_, rd, err := s.ws.NextReader()
		if err != nil {
			return err
		}
		b := buf[:0]
		for {
			if len(b) == cap(b) {
				b = append(b, 0)[:len(b)]
			}
			n, err := rd.Read(b[len(b):cap(b)])
			b = b[:len(b)+n]
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		buf = b
		now := time.Now().UnixNano()
		if s.centrifugo {
			for line := range bytes.SplitSeq(b, []byte("\n")) {
				switch {
				case bytes.HasPrefix(line, []byte(`{"push":`)) && bytes.Contains(line, []byte(`"pub":`)):
					s.record(line, messages, now, delivered)
				case bytes.Equal(line, []byte("{}")):
					// A server ping: answer, or be disconnected.
					_ = s.ws.WriteMessage(websocket.TextMessage, line)
				case bytes.Contains(line, []byte(`"error"`)):
					s.errs++
				}
			}
			continue
		}
		if !bytes.HasPrefix(b, []byte(`{"type":"message"`)) {
			if bytes.Contains(b, []byte(`"type":"error"`)) {
				s.errs++
			}
			continue
		}
		s.record(b, messages, now, delivered)
	}
}

// record notes one message: its sequence number and latency.
func (s *subscriber) record(b []byte, messages int, now int64, delivered *atomic.Int64) {
	seq, ok1 := intAfter(b, seqKey)
	ts, ok2 := intAfter(b, tsKey)
	if !ok1 || !ok2 || seq < 0 || seq >= int64(messages) {
		s.errs++
		return
	}
	w, bit := seq/64, uint64(1)<<(seq%64)
	if s.seen[w]&bit != 0 {
		s.dups++
		return
	}
	s.seen[w] |= bit
	s.lat = append(s.lat, int32(min((now-ts)/1000, 1<<31-1)))
	delivered.Add(1)
}

func intAfter(b, key []byte) (int64, bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0, false
	}
	b = b[i+len(key):]
	j := 0
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	v, err := strconv.ParseInt(string(b[:j]), 10, 64)
	return v, err == nil
}

func publish(hc *http.Client, c benchConfig, channel, data string) error {
	body := `{"channel":"` + channel + `","data":` + data + `}`
	path := "/v1/publish"
	if c.centrifugo() {
		path = "/api/publish"
	}
	req, err := http.NewRequest("POST", strings.TrimRight(c.adminURL, "/")+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	switch {
	case c.token == "":
	case c.centrifugo():
		req.Header.Set("X-API-Key", c.token)
	default:
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// fetchServerProfile writes the server's CPU profile of the next secs
// seconds to c.serverProfile.
func fetchServerProfile(c benchConfig, secs int) error {
	url := strings.TrimRight(c.adminURL, "/") + "/debug/pprof/profile?seconds=" + strconv.Itoa(secs)
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := (&http.Client{Timeout: time.Duration(secs+30) * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(c.serverProfile)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readRSS is VmRSS in KiB; 0 when unknown.
func readRSS(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// readCPU is user+system CPU seconds of pid; -1 when unknown.
func readCPU(pid int) float64 {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}
