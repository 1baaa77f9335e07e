# Tollgate — the two commands a newcomer needs are `make run` and `make test`.

GO       ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN      := bin/tollgate
POLICY   ?=
FUZZTIME ?= 5s
# Every fuzz target, as package:Target, found by `go test -list` so that a
# new one can never be left out.
FUZZ_PACKAGES = $(shell grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u)

.PHONY: all build run demo k8s-sync test deps e2e-deps e2e unit bench-smoke fuzz-smoke fuzz bench bench-go bench-load bench-load-redis bench-cluster bench-floor bench-rls soak lint vet fmt clean

all: build

build: ## build bin/tollgate
	$(GO) build -o $(BIN) ./cmd/tollgate

run: build ## start Tollgate on the embedded default (memory store, bundled policy); POLICY=path to use your own
	./$(BIN) serve $(if $(POLICY),--policy $(POLICY))

# The demo (cmd/demo): a throwaway redis-server, two Tollgates in a fleet on
# it, cmd/fakeapi, an Envoy stand-in in front of each Tollgate running
# envoy/sidecar.yaml, and a traffic driver on four tiers; a table every
# second, a summary at the end. No Docker, no Envoy.
DEMO_DURATION ?= 60s
DEMO_FLAGS    ?=
demo: build deps ## the demo, here and now: a fleet of two on Redis, fake providers, mixed traffic, a live table; stops after DEMO_DURATION (60s)
	$(GO) build -o bin/fakeapi ./cmd/fakeapi
	$(GO) build -o bin/demo ./cmd/demo
	./bin/demo --duration $(DEMO_DURATION) $(DEMO_FLAGS)

# kustomize reads no file outside a kustomization's directory: the
# Kubernetes base holds copies of the Envoy configs (deploy/k8s_test.go
# fails when they differ from the originals).
k8s-sync: ## copy envoy/sidecar.yaml, envoy/sidecar-transparent.yaml and deploy/envoy-stats.yaml into the Kubernetes base and the transparent overlay
	cp envoy/sidecar.yaml deploy/k8s/base/envoy/sidecar.yaml
	cp deploy/envoy-stats.yaml deploy/k8s/base/envoy/stats.yaml
	cp envoy/sidecar-transparent.yaml deploy/k8s/overlays/transparent/envoy/sidecar-transparent.yaml
	cp deploy/envoy-stats.yaml deploy/k8s/overlays/transparent/envoy/stats.yaml

test: deps e2e-deps lint unit bench-smoke fuzz-smoke ## everything CI runs: installs what tests need, lint, race-enabled tests, a short pass of every fuzzer

# Tests start real servers of their own (redis-server on a free loopback
# port), check alert rules with promtool, and apply transparent mode's
# redirect rules in a network namespace of their own (iptables, nft, ip:
# internal/redirect); install the Debian packages
# when the commands are missing. Each entry is command:package.
TEST_TOOLS := redis-server:redis-server promtool:prometheus chromium:chromium iptables-restore:iptables nft:nftables ip:iproute2
deps: ## install what the tests need (Debian packages)
	@missing=""; for t in $(TEST_TOOLS); do \
		command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The end-to-end test (e2e/) drives the official provider SDKs from npm with
# Node: installed from e2e/package-lock.json into e2e/node_modules
# (git-ignored), again only when the lock changes. Node and npm must be on the
# machine; only the npm registry is needed.
E2E_STAMP := e2e/node_modules/.installed
e2e-deps: $(E2E_STAMP) ## install the SDKs the end-to-end test drives (npm ci into e2e/node_modules)
$(E2E_STAMP): e2e/package-lock.json e2e/package.json
	@command -v npm >/dev/null 2>&1 || { echo "npm is missing: install Node 20+ (the e2e test runs the providers' SDKs)"; exit 1; }
	npm ci --prefix e2e --no-audit --no-fund
	@touch $@

e2e: e2e-deps ## only the end-to-end test: the SDKs through the Envoy stand-in to the fake provider
	$(GO) test -race -count=1 -v ./e2e/

unit:
	$(GO) test -race -count=1 ./...

bench-smoke: ## run every benchmark once, so none rots (no timing is judged)
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...

fuzz-smoke: ## run each fuzzer for FUZZTIME (default 5s) beyond its seed corpus
	@set -e; for pkg in $(FUZZ_PACKAGES); do \
		for name in $$($(GO) test $$pkg -list '^Fuzz' | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
			corpus=$$pkg/testdata/fuzz/$$name; before=$$(ls $$corpus 2>/dev/null | wc -l); \
			if ! $(GO) test $$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) > .fuzz.log 2>&1; then \
				cat .fuzz.log; after=$$(ls $$corpus 2>/dev/null | wc -l); \
				if grep -q 'context deadline exceeded' .fuzz.log && [ "$$after" = "$$before" ] && ! grep -q 'Failing input written' .fuzz.log; then \
					echo "fuzz $$name: the fuzztime boundary race of Go 1.26 (golang/go#75804), no failing input: not a failure"; \
				else rm -f .fuzz.log; exit 1; fi; \
			else tail -n 2 .fuzz.log; fi; \
		done; \
	done; rm -f .fuzz.log

FUZZLONG ?= 2m
fuzz: ## a longer fuzzing pass per target: make fuzz FUZZLONG=10m
	@$(MAKE) --no-print-directory fuzz-smoke FUZZTIME=$(FUZZLONG)

bench: bench-go bench-load bench-load-redis ## Go benchmarks of the hot paths, then the loopback gRPC load tool on each store

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 1s ./...

bench-load: build ## throughput and p50/p99/p999 of Check over loopback gRPC (in-process server)
	./$(BIN) load --duration 10s --concurrency 32 --policy testdata/good/bench.yaml --body testdata/bodies/openai-chat-1k.json

# The yardstick of issue 10: Tollgate against a bare ext_authz + ext_proc
# server, each in its own process, in one run (about 80 s with the defaults).
# FLOOR_FLAGS=--json prints the report as JSON.
FLOOR_DURATION    ?= 10s
FLOOR_WARMUP      ?= 2s
FLOOR_CONCURRENCY ?= 64
FLOOR_CLIENTS     ?= 1000
FLOOR_FLAGS       ?=
bench-floor: build ## Tollgate/bare ratios of throughput, p50/p99 and server CPU per call: Check-only, whole call, one caller
	./$(BIN) floor --duration $(FLOOR_DURATION) --warmup $(FLOOR_WARMUP) --concurrency $(FLOOR_CONCURRENCY) \
		--clients $(FLOOR_CLIENTS) --policy testdata/good/bench.yaml --envoy-config envoy/sidecar.yaml \
		--body testdata/bodies/openai-chat-1k.json --response testdata/responses/openai-chat.json \
		--revision "$$(git describe --always --dirty 2>/dev/null)" $(FLOOR_FLAGS)

REDIS_BENCH_PORT ?= 16399
# The RLS yardstick of issue 14: ShouldRateLimit (README example 2's two
# descriptors, all allowed) against a bare RLS, on the memory store, then on
# a throwaway redis-server with round trips per decision (about 60 s). Apart
# from bench-floor, which needs no Redis and already takes 80 s.
bench-rls: build deps ## Tollgate/bare ratios of ShouldRateLimit throughput, p50/p99, server CPU per call; Redis round trips per decision
	@dir=$$(mktemp -d); \
	redis-server --port $(REDIS_BENCH_PORT) --bind 127.0.0.1 --save '' --appendonly no --dir $$dir --daemonize yes >/dev/null && \
	rc=0; for store in memory redis; do \
		echo "== rls, store $$store"; \
		./$(BIN) floor --modes rls --store $$store --redis-addr 127.0.0.1:$(REDIS_BENCH_PORT) --rls-config testdata/rls/bench \
			--duration $(FLOOR_DURATION) --warmup $(FLOOR_WARMUP) --concurrency $(FLOOR_CONCURRENCY) --clients $(FLOOR_CLIENTS) \
			--revision "$$(git describe --always --dirty 2>/dev/null)" $(FLOOR_FLAGS) || rc=1; \
	done; \
	redis-cli -p $(REDIS_BENCH_PORT) shutdown nosave >/dev/null 2>&1; rm -rf $$dir; exit $$rc

bench-load-redis: build deps ## the same load on a Redis store (a throwaway redis-server on REDIS_BENCH_PORT)
	@dir=$$(mktemp -d); \
	redis-server --port $(REDIS_BENCH_PORT) --bind 127.0.0.1 --save '' --appendonly no --dir $$dir --daemonize yes >/dev/null && \
	./$(BIN) load --duration 10s --concurrency 32 --policy testdata/good/bench.yaml --body testdata/bodies/openai-chat-1k.json \
		--redis-addr 127.0.0.1:$(REDIS_BENCH_PORT); rc=$$?; \
	redis-cli -p $(REDIS_BENCH_PORT) shutdown nosave >/dev/null 2>&1; rm -rf $$dir; exit $$rc

# Issue 16's shape: CLIENTS distinct clients (each with its own bucket,
# budget and concurrency slots), fleets of MEMBERS, under and over a pool's
# limit; then the same shapes on the embedded memory store, whose p999 the
# fleet's is judged against. `make bench-cluster CLIENTS=1000 MEMBERS=3`
# runs one case. Each run is measured after BENCH_CLUSTER_WARMUP (every
# client's keys leased and budgets read once: the steady state of clients
# that stay active; BENCH_CLUSTER_WARMUP=0s shows the cold start too).
CLIENTS ?= 1 1000
MEMBERS ?= 1 3
BENCH_CLUSTER_DURATION ?= 10s
BENCH_CLUSTER_WARMUP ?= 5s
bench-cluster: build deps ## CLIENTS (1 1000) x MEMBERS (1 3) x under/over a pool's limit on one Redis: admitted vs bound, round trips per decision, p50/p99/p999
	@dir=$$(mktemp -d); \
	redis-server --port $(REDIS_BENCH_PORT) --bind 127.0.0.1 --save '' --appendonly no --dir $$dir --daemonize yes >/dev/null && \
	rc=0; for c in $(CLIENTS); do for n in $(MEMBERS); do \
		echo "== $$c client(s), $$n member(s), over the limit: a pool of 1000 requests/s offered far more"; \
		./$(BIN) load --duration $(BENCH_CLUSTER_DURATION) --warmup $(BENCH_CLUSTER_WARMUP) --concurrency 32 --clients $$c --members $$n --cluster --redis-addr 127.0.0.1:$(REDIS_BENCH_PORT) \
			--policy testdata/good/bench-cluster.yaml --overshoot-pool bench-requests || rc=1; \
		echo "== $$c client(s), $$n member(s), under the limit: every check admitted"; \
		./$(BIN) load --duration $(BENCH_CLUSTER_DURATION) --warmup $(BENCH_CLUSTER_WARMUP) --concurrency 32 --clients $$c --members $$n --cluster --redis-addr 127.0.0.1:$(REDIS_BENCH_PORT) \
			--policy testdata/good/bench-cluster-under.yaml --body testdata/bodies/openai-chat-1k.json || rc=1; \
	done; \
		echo "== $$c client(s), embedded memory store, over the limit (the p999 to compare with)"; \
		./$(BIN) load --duration $(BENCH_CLUSTER_DURATION) --warmup $(BENCH_CLUSTER_WARMUP) --concurrency 32 --clients $$c \
			--policy testdata/good/bench-cluster.yaml --overshoot-pool bench-requests || rc=1; \
		echo "== $$c client(s), embedded memory store, under the limit"; \
		./$(BIN) load --duration $(BENCH_CLUSTER_DURATION) --warmup $(BENCH_CLUSTER_WARMUP) --concurrency 32 --clients $$c \
			--policy testdata/good/bench-cluster-under.yaml --body testdata/bodies/openai-chat-1k.json || rc=1; \
	done; \
	redis-cli -p $(REDIS_BENCH_PORT) shutdown nosave >/dev/null 2>&1; rm -rf $$dir; exit $$rc

# Issue 11's soak: the built binary under mixed and hostile traffic for
# SOAK_DURATION on each of SOAK_STORES (memory, redis: a throwaway
# redis-server of its own; cluster: a fleet of three on one), judged on
# unexpected outcomes, flat RSS and goroutines, and nothing left held.
# About 12 minutes a store with the defaults; not part of make test.
# SOAK_FLAGS passes more (e.g. --scale 2, --kinds '^hostile').
SOAK_DURATION ?= 10m
SOAK_STORES   ?= memory redis cluster
SOAK_FLAGS    ?=
soak: build deps ## SOAK_DURATION (10m) of mixed and hostile traffic on each store: RSS and goroutines flat, nothing leaked
	$(GO) build -o bin/soak ./cmd/soak
	./bin/soak --bin $(BIN) --duration $(SOAK_DURATION) --stores "$(SOAK_STORES)" $(SOAK_FLAGS)

lint: vet ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
