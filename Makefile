# edgenode: `make run` starts an embedded single node, `make test` runs every test.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin/edgenode
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build run test test-short bench lint fmt clean package

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/edgenode

# An embedded single node: HTTPS 127.0.0.1:8443, admin 127.0.0.1:9090,
# DNS 127.0.0.1:8053, Mongo proxy 127.0.0.1:27018; data in ./data.
run: build
	./$(BIN) run $(if $(CONFIG),--config $(CONFIG))

# Every test, including the seed corpora of the fuzz targets.
test:
	$(GO) test -count=1 -timeout 20m ./...

# The Debian package (Debian 12): bin/edgenode_VERSION_ARCH.deb, built with
# dpkg-deb; what it holds and does: scripts/package, packaging/.
package: build
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || date +%s) ./scripts/package $(BIN) $(VERSION)

bench: build
	./scripts/bench

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin

# The 3-node local cluster of scripts/cluster (127.0.0.1-3, same ports, state in
# data/cluster/) with the demo comment app on. Prints each node's widget URL and
# the status pages; stop it with `scripts/cluster down`.
.PHONY: demo
demo: SHELL := /bin/bash
demo: build
	@set -euo pipefail; dir=data/cluster; \
	for i in 1 2 3; do \
	  if [ -f $$dir/node$$i.pid ] && kill -0 "$$(cat $$dir/node$$i.pid)" 2>/dev/null; then \
	    echo "node$$i is already running (pid $$(cat $$dir/node$$i.pid)): scripts/cluster down first" >&2; exit 1; fi; \
	done; \
	mkdir -p $$dir/certs; \
	[ -f $$dir/ca/ca.crt ] || ./$(BIN) ca init --dir $$dir/ca >/dev/null; \
	for i in 1 2 3; do [ -f $$dir/certs/node$$i.crt ] || ./$(BIN) ca issue --dir $$dir/ca --node node$$i --out $$dir/certs --host 127.0.0.$$i >/dev/null; done; \
	[ -f $$dir/gossip.key ] || (umask 077; head -c 32 /dev/urandom | base64 > $$dir/gossip.key); \
	[ -f $$dir/fleet.secret ] || (umask 077; head -c 32 /dev/urandom | base64 > $$dir/fleet.secret); \
	for i in 1 2 3; do \
	  { cat configs/cluster/node$$i.yaml; printf '\nweb:\n  demo:\n    enabled: true\n'; } > $$dir/demo-node$$i.yaml; \
	  ./$(BIN) run --config $$dir/demo-node$$i.yaml >> $$dir/node$$i.log 2>&1 & echo $$! > $$dir/node$$i.pid; \
	done; \
	for i in 1 2 3; do \
	  for _ in $$(seq 300); do \
	    curl -sf http://127.0.0.$$i:9090/metrics 2>/dev/null | grep -q '^edgenode_mongo_repl_synced 1' && break; \
	    kill -0 "$$(cat $$dir/node$$i.pid)" 2>/dev/null || { echo "node$$i exited; see $$dir/node$$i.log" >&2; tail -n 20 $$dir/node$$i.log >&2; exit 1; }; \
	    sleep 0.2; \
	  done; \
	done; \
	echo "demo up: three nodes, each with its own database, comments live across all of them"; \
	for i in 1 2 3; do echo "  widget on node$$i:  https://127.0.0.$$i:8443/demo/"; done; \
	for i in 1 2 3; do echo "  status of node$$i:  http://127.0.0.$$i:9090/status"; done; \
	echo "  (self-signed certificates: accept each node's once in the browser)"; \
	echo "  logs in $$dir/nodeN.log; stop with: scripts/cluster down"
