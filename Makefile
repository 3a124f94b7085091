# hopwatch — see README.md.
GO      ?= go
PKGS    ?= ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build test run lint fuzz bench check-config dashboard e2e-tools soak bench-peers bench-peers-short

# deploy/ is its own Go module (kustomize, k8s.io/api, the Grafana SDK and
# the PromQL parser stay out of the proxy's go.mod); test and lint cover it
# too.
DEPLOY := deploy

## build: compile the proxy and the demo into bin/
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/proxy ./cmd/proxy
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/demo ./cmd/demo

## run: the demo: bot services behind hopwatch, simulated users, live hop table (ARGS="-duration 1m -fallback=on")
run:
	$(GO) run ./cmd/demo $(ARGS)

## test: vet and run every test with the race detector (the proxy's module, then deploy/'s)
test:
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	cd $(DEPLOY) && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 10m ./...

# staticcheck is pinned and installed into bin/tools, so every machine runs
# the same checks whatever is on PATH.
STATICCHECK_VERSION ?= v0.8.2
TOOLS               := $(CURDIR)/bin/tools

## lint: gofmt, vet, staticcheck (pinned), go.mod tidy, proto/ matches its .proto files (needs protoc)
lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(TOOLS)/staticcheck $(PKGS)
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	cd $(DEPLOY) && $(GO) vet ./... && $(TOOLS)/staticcheck ./...
	@cd $(DEPLOY) && $(GO) mod tidy -diff || { echo "deploy/go.mod/go.sum are not tidy: run go mod tidy in deploy/"; exit 1; }
	@$(MAKE) --no-print-directory proto >/dev/null
	@drift=$$(git status --porcelain -- proto/); \
	if [ -n "$$drift" ]; then echo "proto/ differs from what make proto generates:"; echo "$$drift"; git diff --stat -- proto/; exit 1; fi

# Outside programs of the conformance tests in e2e/ (TestH2Spec,
# TestInterop), each built from a module of its own under tools/ whose
# go.sum pins it and everything it needs: h2spec v2.2.1 (it has no go.mod
# of its own, so a plain go install would float its dependencies) into
# bin/tools; grpc-go's interop client and server into bin/, at the grpc
# version of our go.mod (TestInterop checks that the two agree).

## e2e-tools: build h2spec and the grpc-go interop client and server (pinned in tools/) for the e2e tests
e2e-tools:
	cd tools/h2spec && $(GO) build -o $(TOOLS)/h2spec github.com/summerwind/h2spec/cmd/h2spec
	cd tools/grpcinterop && $(GO) build -o $(CURDIR)/bin/interop-client google.golang.org/grpc/interop/client
	cd tools/grpcinterop && $(GO) build -o $(CURDIR)/bin/interop-server google.golang.org/grpc/interop/server

# The fault soak (soak/): SOAK long, at about 500 calls a second on
# loopback. make test skips it (it runs only with HOPWATCH_SOAK set).
SOAK ?= 10m

## soak: fault soak for SOAK (default 10m): faulty upstreams, cancelling clients; reports goroutine/heap slopes
soak:
	HOPWATCH_SOAK=$(SOAK) $(GO) test -count=1 -run '^TestSoak$$' -timeout 60m -v ./soak/

# Every fuzz target, as package:Target. Seed corpora are committed under
# each package's testdata/fuzz and run by `make test` too.
FUZZ_TARGETS ?= config:FuzzParse \
	routes:FuzzMatch routes:FuzzCheckPath routes:FuzzCheckGRPCMethod routes:FuzzParseRetryOn \
	telemetry:FuzzPropagation telemetry:FuzzJSONScanner telemetry:FuzzSSE telemetry:FuzzReceiver telemetry:FuzzWireEncoding \
	proxy:FuzzForwardedHeaders proxy:FuzzParseGRPCTimeout proxy:FuzzRelayHeaders \
	conversation:FuzzIdentify conversation:FuzzFingerprint conversation:FuzzBodyExtraction conversation:FuzzExtractProto \
	xds:FuzzTLSContext xds:FuzzTranslate
FUZZTIME ?= 15s

## fuzz: run every fuzz target for FUZZTIME each (FUZZTIME=10m FUZZ_TARGETS=routes:FuzzMatch for one, longer)
#
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when -fuzztime ends while a worker is mid-call (golang/go#75804,
# fixed in Go 1.27): no input failed and none is written. A run that fails
# that way and writes no new input under testdata/fuzz is reported as that
# race and not counted; any other failure, or a written input, fails.
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; echo "== $$name (./$$pkg)"; \
		corpus=$$pkg/testdata/fuzz/$$name; before=$$(ls $$corpus 2>/dev/null | wc -l); \
		log=$$(mktemp); rc=0; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$pkg/ >$$log 2>&1 || rc=$$?; \
		after=$$(ls $$corpus 2>/dev/null | wc -l); \
		if [ $$rc -ne 0 ] && [ "$$before" = "$$after" ] && grep -q '^    context deadline exceeded$$' $$log && [ $$(grep -c -- '--- FAIL' $$log) -eq 1 ]; then \
			grep -v -e '^--- FAIL' -e '^FAIL' -e '^    context deadline exceeded$$' -e '^exit status' $$log; \
			echo "== $$name: stopped by the coordinator's end-of-fuzztime race (golang/go#75804), no failing input: not counted"; \
		else cat $$log; [ $$rc -eq 0 ] || { rm -f $$log; exit 1; }; fi; rm -f $$log; \
	done

## bench: proxy benchmarks (ns/op, allocs/op)
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./bench/

## dashboard: regenerate deploy/grafana/hopwatch.json from its Go code (deploy/grafana)
dashboard:
	cd $(DEPLOY) && $(GO) generate ./grafana/

# bench-peers: hopwatch side by side with nginx and HAProxy (and direct) on
# loopback; see bench/peers/doc.go. Installs its programs (apt-get, a pinned
# ghz), builds the proxy, runs alternating rounds and rewrites the generated
# part of docs/benchmarks.md. PEERS_ARGS adds flags (-rounds, -duration,
# -targets, -workloads ...).
PEERS_ARGS ?=
PEERS_RUN   = bench/peers/install.sh && $(GO) build -o bin/proxy ./cmd/proxy && \
	$(GO) run ./bench/peers -hopwatch bin/proxy -ghz bin/tools/ghz

## bench-peers: side-by-side benchmark against nginx and HAProxy (about 15 minutes), writes docs/benchmarks.md
bench-peers:
	$(PEERS_RUN) $(PEERS_ARGS)

## bench-peers-short: the same in about 2 minutes (1 round, short runs; report only, asserts no speed)
bench-peers-short:
	$(PEERS_RUN) -rounds 1 -duration 2s -rate-duration 1s -warmup 500ms -out "" $(PEERS_ARGS)

## check-config: validate the example configuration
check-config:
	$(GO) run ./cmd/proxy -check -config deploy/examples/hopwatch.yaml

# Code generation for proto/. protoc comes from Debian's protobuf-compiler
# (apt-get install -y protobuf-compiler); the Go plugins are pinned here and
# installed into bin/protoc-plugins, so regenerating never depends on what
# happens to be on PATH. protoc-gen-go matches google.golang.org/protobuf in
# go.mod.
PROTOC_GEN_GO_VERSION      ?= v1.36.12
PROTOC_GEN_GO_GRPC_VERSION ?= v1.6.2
PROTO_PLUGINS              := $(CURDIR)/bin/protoc-plugins
PROTO_FILES                := $(shell find proto -name '*.proto' 2>/dev/null)

.PHONY: proto

## proto: regenerate the Go code in proto/ from the .proto files
proto:
	@command -v protoc >/dev/null || { echo "protoc not found: apt-get install -y protobuf-compiler"; exit 1; }
	GOBIN=$(PROTO_PLUGINS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(PROTO_PLUGINS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH="$(PROTO_PLUGINS):$$PATH" protoc -I proto \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		$(PROTO_FILES)
