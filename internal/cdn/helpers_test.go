package cdn

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/testkit"
)

const (
	s3Access = "cdntestaccess"
	s3Secret = "cdntestsecret0123456789"
)

// --- versitygw: one real S3 server per test binary, started on first use.

var gw struct {
	once   sync.Once
	err    error
	addr   string // 127.0.0.1:port
	proc   *os.Process
	exited chan struct{}
	dir    string
	logs   *testkit.LogBuffer
}

func TestMain(m *testing.M) {
	code := m.Run()
	if gw.proc != nil {
		_ = gw.proc.Kill()
		<-gw.exited
	}
	if gw.dir != "" {
		os.RemoveAll(gw.dir)
	}
	os.Exit(code)
}

func versitygwPath() (string, error) { return testkit.Tool("versitygw", nil) }

// xattrsWork reports whether dir's filesystem takes user xattrs (versitygw's
// posix backend keeps metadata there; otherwise it needs --sidecar).
func xattrsWork(dir string) bool {
	p := filepath.Join(dir, ".xattr-probe")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		return false
	}
	defer os.Remove(p)
	return syscall.Setxattr(p, "user.edgenode.probe", []byte("1"), 0) == nil
}

// s3Server returns the address of the shared versitygw.
func s3Server(t testing.TB) string {
	t.Helper()
	gw.once.Do(func() { gw.err = startVersitygw() })
	if gw.err != nil {
		t.Fatalf("versitygw: %v", gw.err)
	}
	return gw.addr
}

func startVersitygw() error {
	bin, err := versitygwPath()
	if err != nil {
		return err
	}
	gw.dir, err = os.MkdirTemp("", "cdn-versitygw-")
	if err != nil {
		return err
	}
	root := filepath.Join(gw.dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := testkit.PickPort("127.0.0.1", false)
		if err != nil {
			return err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		args := []string{"--port", addr, "--access", s3Access, "--secret", s3Secret, "--quiet", "posix"}
		if !xattrsWork(root) {
			side := filepath.Join(gw.dir, "sidecar")
			if err := os.MkdirAll(side, 0o755); err != nil {
				return err
			}
			args = append(args, "--sidecar", side)
		}
		args = append(args, root)
		cmd := exec.Command(bin, args...)
		logs := &testkit.LogBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", bin, err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		if err := waitS3(addr, exited); err != nil {
			_ = cmd.Process.Kill()
			<-exited
			lastErr = fmt.Errorf("%w; output:\n%s", err, logs.String())
			continue
		}
		// cmd.Wait runs in the goroutine above; TestMain kills the process.
		gw.addr, gw.proc, gw.exited, gw.logs = addr, cmd.Process, exited, logs
		return nil
	}
	return lastErr
}

func waitS3(addr string, exited <-chan struct{}) error {
	client := newS3Client("http://"+addr, nil)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := client.ListBuckets(ctx, &s3.ListBucketsInput{})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("versitygw exited")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw not answering on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newS3Client is the tests' own S3 client (puts objects, makes buckets):
// path-style, static credentials, checksums only when required.
func newS3Client(endpoint string, hc *http.Client) *s3.Client {
	o := s3.Options{
		Region:                     "us-east-1",
		BaseEndpoint:               aws.String(endpoint),
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(s3Access, s3Secret, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		RetryMaxAttempts:           1,
	}
	if hc != nil {
		o.HTTPClient = hc
	}
	return s3.New(o)
}

var bucketSeq atomic.Int64

// newBucket creates a bucket unique to the test.
func newBucket(t testing.TB, client *s3.Client) string {
	t.Helper()
	name := fmt.Sprintf("cdn-%d-%d", os.Getpid()%100000, bucketSeq.Add(1))
	if _, err := client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	return name
}

func putObject(t testing.TB, client *s3.Client, bucket, key string, body []byte, ctype string) string {
	t.Helper()
	in := &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(body)}
	if ctype != "" {
		in.ContentType = aws.String(ctype)
	}
	out, err := client.PutObject(context.Background(), in)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return aws.ToString(out.ETag)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// --- counting transport: every origin request the cache makes, by method.

type countingTransport struct {
	base http.RoundTripper
	mu   sync.Mutex
	gets map[string]int // "bucket/key" → GETs
	cond int            // conditional GETs (If-None-Match / If-Modified-Since)
}

func newCountingTransport() *countingTransport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return &countingTransport{base: tr, gets: map[string]int{}}
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet {
		c.mu.Lock()
		c.gets[strings.TrimPrefix(r.URL.Path, "/")]++
		if r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Modified-Since") != "" {
			c.cond++
		}
		c.mu.Unlock()
	}
	return c.base.RoundTrip(r)
}

func (c *countingTransport) count(bucket, key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gets[bucket+"/"+key]
}

func (c *countingTransport) conditional() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cond
}

// --- fault proxy: a real TCP proxy between the cache and versitygw that
// can refuse, hold back, cut or corrupt the S3 responses.

type faultProxy struct {
	ln     net.Listener
	target string
	mode   atomic.Int32 // proxyMode
	// cutAfter / flipAt: response byte offsets (per connection).
	cutAfter, flipAt atomic.Int64
	gateAfter        atomic.Int64 // hold response bytes past this until gate opens
	gate             chan struct{}
	gateOnce         sync.Once
	wg               sync.WaitGroup
	mu               sync.Mutex
	conns            map[net.Conn]struct{}
	passed           atomic.Int64 // response bytes forwarded (all connections)
}

type proxyMode int32

const (
	proxyPass proxyMode = iota
	proxyDown           // accept and close at once
	proxyCut            // forward cutAfter response bytes, then close
	proxyFlip           // flip one response byte at flipAt
	proxyGate           // forward gateAfter bytes, then wait for openGate
	proxyHang           // accept, read, never answer
)

func newFaultProxy(t testing.TB, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, gate: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) url() string { return "http://" + p.ln.Addr().String() }

func (p *faultProxy) set(m proxyMode) {
	p.mode.Store(int32(m))
	// Connections kept alive by the SDK must not carry the old mode on.
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

func (p *faultProxy) openGate() { p.gateOnce.Do(func() { close(p.gate) }) }

func (p *faultProxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c)
		}()
	}
}

func (p *faultProxy) serve(c net.Conn) {
	p.track(c, true)
	defer p.track(c, false)
	defer c.Close()
	mode := proxyMode(p.mode.Load())
	switch mode {
	case proxyDown:
		return
	case proxyHang:
		_, _ = io.Copy(io.Discard, c)
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	p.track(up, true)
	defer p.track(up, false)
	defer up.Close()
	go func() {
		_, _ = io.Copy(up, c)
		up.Close()
	}()
	buf := make([]byte, 4096)
	var off int64
	for {
		n, err := up.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			switch mode {
			case proxyCut:
				if lim := p.cutAfter.Load(); off+int64(n) > lim {
					_, _ = c.Write(chunk[:max(0, lim-off)])
					return
				}
			case proxyFlip:
				if at := p.flipAt.Load(); at >= off && at < off+int64(n) {
					chunk[at-off] ^= 0xff
				}
			case proxyGate:
				if lim := p.gateAfter.Load(); off+int64(n) > lim {
					head := max(0, lim-off)
					if _, err := c.Write(chunk[:head]); err != nil {
						return
					}
					p.passed.Add(head)
					<-p.gate
					chunk = chunk[head:]
				}
			}
			if _, err := c.Write(chunk); err != nil {
				return
			}
			p.passed.Add(int64(len(chunk)))
			off += int64(n)
		}
		if err != nil {
			return
		}
	}
}

func (p *faultProxy) close() {
	p.ln.Close()
	p.openGate()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// --- a cache in front of a bucket, served over real HTTP.

type env struct {
	t      testing.TB
	s3     *s3.Client // direct to versitygw (setup)
	bucket string
	proxy  *faultProxy
	count  *countingTransport
	origin *S3Origin
	cache  *Cache
	reg    *prometheus.Registry
	srv    *httptest.Server
	admin  *httptest.Server
	opts   Options
	logs   *testkit.LogBuffer
	purged chan string
}

// newEnv starts a cache over a fresh bucket, reached through a fault proxy
// and a counting transport. tweak adjusts the options.
func newEnv(t testing.TB, tweak func(*Options)) *env {
	t.Helper()
	addr := s3Server(t)
	e := &env{t: t, s3: newS3Client("http://"+addr, nil), count: newCountingTransport(), purged: make(chan string, 16)}
	e.bucket = newBucket(t, e.s3)
	e.proxy = newFaultProxy(t, addr)
	var err error
	e.origin, err = NewS3Origin(context.Background(), S3Options{
		Bucket: e.bucket, Endpoint: e.proxy.url(), PathStyle: true,
		AccessKeyID: s3Access, SecretAccessKey: s3Secret, MaxAttempts: 1,
		HTTPClient: &http.Client{Transport: e.count},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.opts = Options{Dir: t.TempDir(), Origin: e.origin, OriginTimeout: 5 * time.Second}
	if tweak != nil {
		tweak(&e.opts)
	}
	e.start()
	return e
}

// start (re)creates the cache and its servers on e.opts.
func (e *env) start() {
	e.t.Helper()
	e.reg = prometheus.NewRegistry()
	var log *slog.Logger
	log, e.logs = testkit.Logger(e.t)
	c, err := New(e.opts, log, e.reg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.cache = c
	c.OnPurge(func(_ context.Context, key string, _ time.Time) error { e.purged <- key; return nil })
	mux := http.NewServeMux()
	for p, h := range c.Routes() {
		mux.Handle(p, h)
	}
	e.srv = httptest.NewServer(mux)
	amux := http.NewServeMux()
	for p, h := range c.AdminRoutes() {
		amux.Handle(p, h)
	}
	e.admin = httptest.NewServer(amux)
	e.t.Cleanup(e.stop)
}

func (e *env) stop() {
	if e.srv == nil {
		return
	}
	e.settle()
	e.srv.Close()
	e.admin.Close()
	if err := e.cache.Close(); err != nil {
		e.t.Errorf("close: %v", err)
	}
	e.srv = nil
	if e.t.Failed() {
		e.t.Logf("cache log:\n%s", e.logs.String())
	}
}

// age makes key's entry d older (as if time had passed; tests never sleep
// through a TTL) and forgets any recent origin failure for it.
func (e *env) age(key string, d time.Duration) {
	e.t.Helper()
	e.cache.mu.Lock()
	defer e.cache.mu.Unlock()
	ent, ok := e.cache.idx.Peek(key)
	if !ok {
		e.t.Fatalf("age: %s not cached", key)
	}
	ent.validated -= int64(d)
	ent.failedUntil = 0
}

// expireNegative ends the remembered 404 of key, as NegativeTTL would.
func (e *env) expireNegative(key string) {
	e.cache.mu.Lock()
	defer e.cache.mu.Unlock()
	e.cache.negative.Remove(key)
}

// settle waits until the background work of earlier requests (downloads,
// commits, revalidations) has ended.
func (e *env) settle() {
	e.t.Helper()
	testkit.WaitFor(e.t, settleTimeout, "fills to end", func() bool { return e.cache.running.Load() == 0 })
}

func (e *env) restart() {
	e.t.Helper()
	e.stop()
	e.start()
}

func (e *env) put(key string, body []byte, ctype string) string {
	e.t.Helper()
	return putObject(e.t, e.s3, e.bucket, key, body, ctype)
}

type resp struct {
	status int
	header http.Header
	body   []byte
	err    error // reading the body failed
}

func (e *env) get(key string, hdr ...string) resp {
	e.t.Helper()
	r := doGet(e.t, e.srv.Client(), http.MethodGet, e.srv.URL+"/media/"+key, hdr...)
	e.settle()
	return r
}

func doGet(t testing.TB, client *http.Client, method, url string, hdr ...string) resp {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := client.Do(req)
	if err != nil {
		return resp{err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: b, err: err}
}

// filesUnder counts regular files under dir (by suffix when given).
func filesUnder(t testing.TB, dir, suffix string) (n int, bytes int64) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, suffix) {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n++
			bytes += fi.Size()
		}
		return nil
	})
	return n, bytes
}

// settleTimeout bounds waits for states reached in the background (never
// timing).
const settleTimeout = 20 * time.Second

func deleteInput(bucket, key string) *s3.DeleteObjectInput {
	return &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}
}

func execCommand(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }

// newH2Server serves the cache's routes over TLS with HTTP/2.
func newH2Server(t testing.TB, c *Cache) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	for p, h := range c.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}
