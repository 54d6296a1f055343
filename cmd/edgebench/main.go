// Command edgebench is the websocket load tool of `make bench`: it drives
// real sockets from its own process against a node's pubsub and prints one
// line per run. It is not part of the product.
//
//	edgebench run   -ws wss://127.0.0.1:8443/ws -admin http://127.0.0.1:9090 -token-file data/publish.secret \
//	                -n 10000 -channels 1 -m 100 -rate 10 -server-pid PID
//	edgebench serve [-listen 127.0.0.1:0] [-admin 127.0.0.1:0] [-dir DIR]
//	edgebench suite [-sizes 1000,10000,19000]
//	edgebench interest [-nodes 5] [-subscribed 2] [-subs 10] [-m 2000] [-rate 1000] [-size 100]
//
// run opens N websocket subscribers (over TLS, spread over source addresses
// 127.1.x.y so per-address limits are not hit), subscribes subscriber i to
// channel i mod K, publishes M messages at R per second through the admin
// publish API (message j to channel j mod K) and reports connect time,
// delivered/expected, duplicates, latency (publish request sent -> frame
// read by the subscriber) p50/p99/max, and, given the server's pid, its RSS
// growth per connection (from /proc/PID/status, idle subscribers) and CPU
// per delivery (from /proc/PID/stat).
//
// serve runs a minimal node for benchmarking: the real transport (TLS,
// self-signed certificate) with pubsub's routes, and the admin listener
// with its publish API. It prints "WS_URL ADMIN_URL TOKEN" on one line.
//
// suite starts serve as a child process and runs the standard table: each
// N on one channel (10 messages/s) and on N channels.
//
// interest measures the mesh bytes of a publish between nodes: N nodes in
// this process with real mesh links, subscribers on some, publishes on
// another; every publish sent to every peer (the fan-out before interest
// routing) beside every publish sent to the peers with subscribers only.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: edgebench run|serve|suite|interest [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runCmd(os.Args[2:])
	case "serve":
		err = serveCmd(os.Args[2:])
	case "suite":
		err = suiteCmd(os.Args[2:])
	case "interest":
		err = interestCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "edgebench:", err)
		os.Exit(1)
	}
}
