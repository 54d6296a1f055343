package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/edgenode/edgenode/internal/transport"
)

// Centrifugo is the anchor of the pubsub table: the same subscribers,
// channel, message size and rate, over TLS with a throwaway self-signed
// certificate, published through its HTTP API (on its internal port, as
// edgenode's publish API is on the admin listener; Centrifugo serves that
// port with TLS too).
//
// Its client protocol (JSON, one command or reply per line; a websocket
// frame may carry several lines):
//
//	-> {"id":1,"connect":{}}
//	-> {"id":2,"subscribe":{"channel":"bench-0"}}
//	<- {"id":1,"connect":{...}}
//	<- {"id":2,"subscribe":{...}}
//	<- {"push":{"channel":"bench-0","pub":{"data":{...},"offset":7}}}
//	<- {}            a server ping, answered with {}
//
// The channel keeps a history with recovery (positions), like edgenode's.

// centrifugoConfig is the server's configuration for one run.
func centrifugoConfig(port, apiPort int, certPEM, keyPEM, apiKey string) ([]byte, error) {
	cfg := map[string]any{
		"http_server": map[string]any{
			"address":          "127.0.0.1",
			"port":             port,
			"internal_address": "127.0.0.1",
			"internal_port":    strconv.Itoa(apiPort),
			"tls":              map[string]any{"enabled": true, "cert_pem": certPEM, "key_pem": keyPEM},
		},
		"log":      map[string]any{"level": "error"},
		"http_api": map[string]any{"key": apiKey},
		"client": map[string]any{
			"allow_anonymous_connect_without_token": true,
			"allowed_origins":                       []string{"*"},
		},
		"channel": map[string]any{
			"without_namespace": map[string]any{
				"allow_subscribe_for_anonymous": true,
				"allow_subscribe_for_client":    true,
				"history_size":                  1000,
				"history_ttl":                   "300s",
				"force_recovery":                true,
			},
		},
		"usage_stats": map[string]any{"disabled": true},
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// freePort picks a loopback port nothing listens on.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// withCentrifugo starts Centrifugo (bin) with a fresh configuration and
// certificate, runs fn with its websocket URL, API URL, API key and pid,
// and stops it.
func withCentrifugo(bin string, fn func(ws, api, key string, pid int) (result, error)) (result, error) {
	dir, err := os.MkdirTemp("", "edgebench-centrifugo")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.DiscardHandler)
	certFile, keyFile, err := transport.EnsureSelfSigned(dir, nil, log)
	if err != nil {
		return result{}, err
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return result{}, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return result{}, err
	}
	port, err := freePort()
	if err != nil {
		return result{}, err
	}
	apiPort, err := freePort()
	if err != nil {
		return result{}, err
	}
	var k [16]byte
	_, _ = rand.Read(k[:])
	apiKey := hex.EncodeToString(k[:])
	cfg, err := centrifugoConfig(port, apiPort, string(certPEM), string(keyPEM), apiKey)
	if err != nil {
		return result{}, err
	}
	cfgFile := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		return result{}, err
	}
	cmd := exec.Command(bin, "--config", cfgFile)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		return result{}, fmt.Errorf("centrifugo: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	// Ready when both ports accept connections.
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range []int{port, apiPort} {
		for {
			c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-exited:
				return result{}, fmt.Errorf("centrifugo exited: %s", firstLines(stderr.Bytes(), 5))
			default:
			}
			if time.Now().After(deadline) {
				return result{}, fmt.Errorf("centrifugo did not listen on %d: %s", p, firstLines(stderr.Bytes(), 5))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	time.Sleep(500 * time.Millisecond) // let the runtime settle before the RSS baseline
	return fn(fmt.Sprintf("wss://127.0.0.1:%d/connection/websocket", port), fmt.Sprintf("https://127.0.0.1:%d", apiPort), apiKey, cmd.Process.Pid)
}

func firstLines(b []byte, n int) string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() && len(out) < n {
		out = append(out, sc.Text())
	}
	return strings.Join(out, " | ")
}
