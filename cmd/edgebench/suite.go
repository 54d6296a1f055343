package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// suiteCmd runs the standard table, each run against a fresh server
// process (so that its RSS growth is the run's own).
func suiteCmd(args []string) error {
	fs := flag.NewFlagSet("suite", flag.ExitOnError)
	sizes := fs.String("sizes", "1000,10000,19000", "subscriber counts")
	serveArgs := fs.String("serve-args", "", "extra flags for the server (e.g. -no-poller, -plain-tls)")
	messages := fs.Int("m", 100, "messages per one-channel run (at -rate)")
	rate := fs.Float64("rate", 10, "messages per second on one channel")
	manyRate := fs.Float64("many-rate", 2000, "messages per second on N channels (N messages: one per subscriber)")
	centrifugo := fs.String("centrifugo", "", "Centrifugo binary: each one-channel run is repeated against it (same subscribers, message size and rate, TLS) and the ratio printed")
	only1 := fs.Bool("one-channel", false, "only the one-channel runs")
	_ = fs.Parse(args)
	var ns []int
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("bad size %q", s)
		}
		ns = append(ns, n)
	}
	fmt.Printf("# edgebench: websocket subscribers over TLS, load tool and server on this machine (%d CPUs); server: %s\n",
		numCPU(), strings.TrimSpace("edgebench serve "+*serveArgs))
	printHeader()
	if *centrifugo != "" {
		if _, err := os.Stat(*centrifugo); err != nil {
			return fmt.Errorf("centrifugo: %w (scripts/install-bench-tools installs it)", err)
		}
	}
	for _, n := range ns {
		for _, many := range []bool{false, true} {
			if many && *only1 {
				continue
			}
			c := benchConfig{tenant: "demo", prefix: "bench-", n: n, channels: 1, messages: *messages, rate: *rate,
				size: 100, conc: 64, perSource: 200, settle: 3 * time.Second, wait: 15 * time.Second}
			if many {
				c.channels, c.messages, c.rate = n, n, *manyRate
			}
			r, err := withServer(strings.Fields(*serveArgs), func(ws, admin, token string, pid int) (result, error) {
				c.wsURL, c.adminURL, c.token, c.pid = ws, admin, token, pid
				return runBench(c)
			})
			if err != nil {
				return err
			}
			printRow(r)
			if many || *centrifugo == "" {
				continue
			}
			cc := c
			cc.label, cc.proto, cc.tenant = "centrifugo 1ch", "centrifugo", ""
			cr, err := withCentrifugo(*centrifugo, func(ws, api, key string, pid int) (result, error) {
				cc.wsURL, cc.adminURL, cc.token, cc.pid = ws, api, key, pid
				return runBench(cc)
			})
			if err != nil {
				fmt.Printf("%-16s %v\n", "centrifugo 1ch", err)
				continue
			}
			printRow(cr)
			printRatio(r, cr)
		}
	}
	return nil
}

// printRatio compares edgenode's run with Centrifugo's: how many times
// lower edgenode's latency, memory and CPU are (above 1: edgenode ahead).
func printRatio(e, c result) {
	ratio := func(ce, ee float64) string {
		if ce < 0 || ee <= 0 {
			return "?"
		}
		return fmt.Sprintf("%.2fx", ce/ee)
	}
	fmt.Printf("%-16s centrifugo/edgenode: p50 %s, p99 %s, KiB/conn %s, server CPU per delivery %s (above 1: edgenode ahead); delivered %d/%d vs %d/%d\n",
		"ratio", ratio(float64(c.p50), float64(e.p50)), ratio(float64(c.p99), float64(e.p99)),
		ratio(c.kibPerConn, e.kibPerConn), ratio(c.cpuPerDelivery, e.cpuPerDelivery),
		e.delivered, e.expected, c.delivered, c.expected)
}

func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "processor\t:")
}

// withServer starts `edgebench serve` as a child, runs fn, stops the child.
func withServer(extra []string, fn func(ws, admin, token string, pid int) (result, error)) (result, error) {
	self, err := os.Executable()
	if err != nil {
		return result{}, err
	}
	dir, err := os.MkdirTemp("", "edgebench")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command(self, append([]string{"serve", "-dir", dir}, extra...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return result{}, err
	}
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return result{}, fmt.Errorf("server did not start: %w", err)
	}
	f := strings.Fields(line)
	if len(f) != 3 {
		return result{}, fmt.Errorf("server said %q", line)
	}
	time.Sleep(500 * time.Millisecond) // let the runtime settle before the RSS baseline
	return fn(f[0], f[1], f[2], cmd.Process.Pid)
}
