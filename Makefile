# edgenode: `make run` starts an embedded single node, `make test` runs every test.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin/edgenode
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build run test test-short bench lint fmt clean

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
