package authz_test

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy/rls"
)

// rlsExamples is envoyproxy/ratelimit's README examples, in its runtime
// layout.
const rlsExamples = "../testdata/rls/examples"

// rlsTarget is one Tollgate serving RLS over real gRPC on loopback.
type rlsTarget struct {
	client rlsv3.RateLimitServiceClient
}

// startRLS serves RLS on store with the examples, on clk, with cfg's
// changes; it returns the client.
func startRLS(t *testing.T, store admission.Store, clk *fakeclock.Clock, tune func(*authz.Config)) rlsv3.RateLimitServiceClient {
	t.Helper()
	conf, err := rls.Load(rlsExamples)
	require.NoError(t, err)
	cfg := authz.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.APIAddr, cfg.DrainDelay = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", 0
	if tune != nil {
		tune(&cfg)
	}
	srv, err := authz.New(cfg, authz.Deps{Policies: admission.StaticPolicy{Set: compilePolicy(t, serverPolicy)}, Store: store,
		Registry: prometheus.NewRegistry(), Clock: clk, RateLimits: admission.StaticRateLimits{Config: conf}})
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background()) }()
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		assert.NoError(t, srv.Shutdown(ctx))
		assert.NoError(t, recv(t, served))
		assert.NoError(t, conn.Close())
	})
	return rlsv3.NewRateLimitServiceClient(conn)
}

// rlsBackends build the stores RLS runs on, each on a fake clock: memory,
// Redis, and a fleet of two members on one Redis (one server each; calls
// alternate between them).
var rlsBackends = map[string]func(t *testing.T, clk *fakeclock.Clock) []rlsv3.RateLimitServiceClient{
	"memory": func(t *testing.T, clk *fakeclock.Clock) []rlsv3.RateLimitServiceClient {
		return []rlsv3.RateLimitServiceClient{startRLS(t, newMemStore(t, clk), clk, nil)}
	},
	"redis": func(t *testing.T, clk *fakeclock.Clock) []rlsv3.RateLimitServiceClient {
		s, err := redisstore.New(redisSrv.Client(t), redisstore.Config{Prefix: redistest.Prefix(t)})
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, s.Close()) })
		return []rlsv3.RateLimitServiceClient{startRLS(t, s, clk, nil)}
	},
	// a fleet member counts from its lease: the calls go to one member
	// (TestRLSFleetShares spreads them over both)
	"fleet of two": func(t *testing.T, clk *fakeclock.Clock) []rlsv3.RateLimitServiceClient {
		return startFleetRLS(t, clk)[:1]
	},
}

// startFleetRLS starts a fleet of two members on one Redis, on clk, and an
// RLS server on each.
func startFleetRLS(t *testing.T, clk *fakeclock.Clock) []rlsv3.RateLimitServiceClient {
	t.Helper()
	prefix := redistest.Prefix(t)
	key := []byte("0123456789abcdef0123456789abcdef")
	var fleets []*cluster.Fleet
	var out []rlsv3.RateLimitServiceClient
	for i := range 2 {
		shared, err := redisstore.New(redisSrv.Client(t), redisstore.Config{Prefix: prefix})
		require.NoError(t, err)
		ncfg := cluster.NodeConfig{Name: fmt.Sprintf("m%d", i), BindAddr: "127.0.0.1", Key: key,
			DemandEvery: 50 * time.Millisecond, RejoinEvery: 200 * time.Millisecond}
		if i > 0 {
			ncfg.Seeds = []string{fleets[0].Node.Addr()}
		}
		scfg := cluster.DefaultConfig()
		scfg.Clock = clk
		f, err := cluster.Join(ncfg, scfg, shared, prometheus.NewRegistry())
		require.NoError(t, err)
		fleets = append(fleets, f)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			assert.NoError(t, f.Close(ctx))
		})
		out = append(out, startRLS(t, f.Store, clk, nil))
	}
	require.Eventually(t, func() bool { return fleets[0].Node.Live() == 2 && fleets[1].Node.Live() == 2 },
		10*time.Second, 10*time.Millisecond, "both members live")
	return out
}

func desc(kv ...string) *rlcommon.RateLimitDescriptor {
	d := &rlcommon.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

func withHits(d *rlcommon.RateLimitDescriptor, n uint64) *rlcommon.RateLimitDescriptor {
	d.HitsAddend = wrapperspb.UInt64(n)
	return d
}

// st is a wanted descriptor status: code, the limit (0 rpu and no unit
// for none) and what remains.
type st struct {
	over      bool
	rpu       uint32
	unit      rlsv3.RateLimitResponse_RateLimit_Unit
	remaining uint32
}

type rlsCall struct {
	advance     time.Duration // the clock moves first
	domain      string
	hits        uint32
	descriptors []*rlcommon.RateLimitDescriptor
	times       int // sent this many times (one when zero); the last answer is checked
	over        bool
	want        []st
}

const (
	second = rlsv3.RateLimitResponse_RateLimit_SECOND
	minute = rlsv3.RateLimitResponse_RateLimit_MINUTE
	day    = rlsv3.RateLimitResponse_RateLimit_DAY
)

// rlsCases are the conformance cases, each a sequence of calls on a fresh
// store, written from envoyproxy/ratelimit's README examples.
var rlsCases = map[string][]rlsCall{
	"value match before key only (example 3)": {
		{domain: "edge_proxy_per_ip", descriptors: descs(desc("remote_address", "50.0.0.5")), over: true, want: []st{{true, 0, second, 0}}},
		{domain: "edge_proxy_per_ip", descriptors: descs(desc("remote_address", "50.0.0.1")), times: 10, want: []st{{false, 10, second, 0}}},
		{domain: "edge_proxy_per_ip", descriptors: descs(desc("remote_address", "50.0.0.1")), over: true, want: []st{{true, 10, second, 0}}},
		{domain: "edge_proxy_per_ip", descriptors: descs(desc("remote_address", "50.0.0.2")), want: []st{{false, 10, second, 9}}},
	},
	"nested descriptors (example 2)": {
		{domain: "messaging", descriptors: descs(desc("message_type", "marketing", "to_number", "2061111111")), times: 5, want: []st{{false, 5, day, 0}}},
		{domain: "messaging", descriptors: descs(desc("message_type", "marketing", "to_number", "2061111111")), over: true, want: []st{{true, 5, day, 0}}},
		{domain: "messaging", descriptors: descs(desc("message_type", "marketing", "to_number", "2062222222")), want: []st{{false, 5, day, 4}}},
		// the placeholder level has no limit of its own
		{domain: "messaging", descriptors: descs(desc("message_type", "marketing")), want: []st{{}}},
	},
	"key only, a counter per value (example 2)": {
		{domain: "messaging", hits: 100, descriptors: descs(desc("to_number", "2061111111")), want: []st{{false, 100, day, 0}}},
		{domain: "messaging", descriptors: descs(desc("to_number", "2062222222")), want: []st{{false, 100, day, 99}}},
		{domain: "messaging", descriptors: descs(desc("to_number", "2061111111")), over: true, want: []st{{true, 100, day, 0}}},
	},
	"replaces (example 7)": {
		{domain: "example7", descriptors: descs(desc("key_1", "value_1", "user", "bkthomps"), desc("key_2", "value_2", "user", "bkthomps")), times: 10,
			want: []st{{}, {false, 10, second, 0}}},
		{domain: "example7", descriptors: descs(desc("key_1", "value_1", "user", "bkthomps"), desc("key_2", "value_2", "user", "bkthomps")), over: true,
			want: []st{{}, {true, 10, second, 0}}},
		// the replaced limit was left alone
		{domain: "example7", descriptors: descs(desc("key_1", "value_1", "user", "bkthomps")), want: []st{{false, 5, second, 4}}},
	},
	"unlimited (example 5)": {
		{domain: "internal", descriptors: descs(desc("ldap", "x")), times: 3, want: []st{{false, 0, 0, math.MaxUint32}}},
		{domain: "internal", descriptors: descs(desc("azure", "x")), want: []st{{false, 100, minute, 99}}},
	},
	"shadow_mode (example 6)": {
		{domain: "example6", descriptors: descs(desc("service", "auth-service", "user", "user-a")), times: 12, want: []st{{false, 10, second, 0}}},
		{domain: "example6", descriptors: descs(desc("service", "auth-service", "user", "user-b")), times: 20, want: []st{{false, 20, second, 0}}},
		{domain: "example6", descriptors: descs(desc("service", "auth-service", "user", "user-b")), over: true, want: []st{{true, 20, second, 0}}},
	},
	"hits_addend": {
		{domain: "internal", hits: 60, descriptors: descs(desc("azure", "x")), want: []st{{false, 100, minute, 40}}},
		// over: nothing is taken
		{domain: "internal", hits: 60, descriptors: descs(desc("azure", "x")), over: true, want: []st{{true, 100, minute, 0}}},
		// a descriptor's own hits_addend wins over the request's
		{domain: "internal", hits: 60, descriptors: descs(withHits(desc("azure", "x"), 40)), want: []st{{false, 100, minute, 0}}},
		// three seconds refill five (100 a minute, as a token bucket)
		{advance: 3 * time.Second, domain: "internal", descriptors: descs(desc("azure", "x")), want: []st{{false, 100, minute, 4}}},
		// zero reads without taking
		{domain: "internal", descriptors: descs(withHits(desc("azure", "x"), 0)), want: []st{{false, 100, minute, 4}}},
	},
	"several descriptors, one over (example 1)": {
		{domain: "mongo_cps", hits: 500, descriptors: descs(desc("database", "default")), want: []st{{false, 500, second, 0}}},
		{domain: "mongo_cps", descriptors: descs(desc("database", "users"), desc("database", "default"), desc("database", "other")), over: true,
			want: []st{{false, 500, second, 500}, {true, 500, second, 0}, {}}},
		{domain: "mongo_cps", descriptors: descs(desc("database", "users")), want: []st{{false, 500, second, 499}}},
	},
	"the same counter twice in one request": {
		{domain: "internal", hits: 30, descriptors: descs(desc("azure", "x"), desc("azure", "x")), want: []st{{false, 100, minute, 40}, {false, 100, minute, 40}}},
	},
	"unknown domain": {
		{domain: "nope", descriptors: descs(desc("database", "users")), want: []st{{}}},
	},
	"a rule deeper than the request, or shallower (example 4)": {
		{domain: "example4", descriptors: descs(desc("key", "value", "subkey", "subvalue")), want: []st{{}}},
		{domain: "example4_nested", descriptors: descs(desc("key", "value", "subkey", "subvalue")), want: []st{{false, 300, second, 299}}},
	},
}

func descs(d ...*rlcommon.RateLimitDescriptor) []*rlcommon.RateLimitDescriptor { return d }

// TestRLSConformance runs every case over real gRPC on each backend.
func TestRLSConformance(t *testing.T) {
	for bname, backend := range rlsBackends {
		t.Run(bname, func(t *testing.T) {
			for name, calls := range rlsCases {
				t.Run(name, func(t *testing.T) {
					clk := fakeclock.New(epoch)
					clients := backend(t, clk)
					n := 0
					for i, c := range calls {
						clk.Advance(c.advance)
						var resp *rlsv3.RateLimitResponse
						for range max(c.times, 1) {
							var err error
							resp, err = clients[n%len(clients)].ShouldRateLimit(context.Background(),
								&rlsv3.RateLimitRequest{Domain: c.domain, Descriptors: c.descriptors, HitsAddend: c.hits})
							require.NoError(t, err, "call %d", i)
							n++
						}
						wantCode := rlsv3.RateLimitResponse_OK
						if c.over {
							wantCode = rlsv3.RateLimitResponse_OVER_LIMIT
						}
						assert.Equal(t, wantCode, resp.GetOverallCode(), "call %d", i)
						require.Len(t, resp.GetStatuses(), len(c.want), "call %d", i)
						for j, w := range c.want {
							got := resp.GetStatuses()[j]
							code := rlsv3.RateLimitResponse_OK
							if w.over {
								code = rlsv3.RateLimitResponse_OVER_LIMIT
							}
							assert.Equal(t, code, got.GetCode(), "call %d status %d", i, j)
							// a fleet member counts from its lease: what it
							// reports remaining is its own view
							if bname != "fleet of two" || w.unit == 0 {
								assert.Equal(t, w.remaining, got.GetLimitRemaining(), "call %d status %d remaining", i, j)
							}
							if w.unit == 0 {
								assert.Nil(t, got.GetCurrentLimit(), "call %d status %d", i, j)
								continue
							}
							require.NotNil(t, got.GetCurrentLimit(), "call %d status %d", i, j)
							assert.Equal(t, w.rpu, got.GetCurrentLimit().GetRequestsPerUnit(), "call %d status %d", i, j)
							assert.Equal(t, w.unit, got.GetCurrentLimit().GetUnit(), "call %d status %d", i, j)
							assert.NotNil(t, got.GetDurationUntilReset(), "call %d status %d", i, j)
						}
					}
				})
			}
		})
	}
}

// TestRLSHeaders: with the headers on, the descriptor closest to its
// limit (the one over it, when one is) is reported as that server reports
// it, and duration_until_reset is when its bucket is full again.
func TestRLSHeaders(t *testing.T) {
	clk := fakeclock.New(epoch)
	c := startRLS(t, newMemStore(t, clk), clk, func(c *authz.Config) { c.RateLimitHeaders.Enabled = true })
	call := func(hits uint32, d ...*rlcommon.RateLimitDescriptor) *rlsv3.RateLimitResponse {
		resp, err := c.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "internal", Descriptors: d, HitsAddend: hits})
		require.NoError(t, err)
		return resp
	}
	headers := func(r *rlsv3.RateLimitResponse) map[string]string {
		out := map[string]string{}
		for _, h := range r.GetResponseHeadersToAdd() {
			out[h.GetKey()] = h.GetValue()
		}
		return out
	}
	tests := map[string]struct {
		hits  uint32
		descs []*rlcommon.RateLimitDescriptor
		want  map[string]string
	}{
		"one taken, 0.6 s to refill": {1, descs(desc("azure", "a")), map[string]string{"RateLimit-Limit": "100", "RateLimit-Remaining": "99", "RateLimit-Reset": "1"}},
		"the closest of two":         {10, descs(desc("azure", "a"), desc("azure", "b")), map[string]string{"RateLimit-Limit": "100", "RateLimit-Remaining": "89", "RateLimit-Reset": "7"}},
		"unlimited only: none":       {1, descs(desc("ldap", "a")), map[string]string{}},
		"over: that one":             {95, descs(desc("azure", "b"), desc("azure", "a")), map[string]string{"RateLimit-Limit": "100", "RateLimit-Remaining": "0", "RateLimit-Reset": "7"}},
	}
	for _, name := range []string{"one taken, 0.6 s to refill", "the closest of two", "unlimited only: none", "over: that one"} {
		tc := tests[name]
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, headers(call(tc.hits, tc.descs...)))
		})
	}
}

// TestRLSInvalid: a request without a domain or descriptors is refused
// (as that server refuses it) and never panics.
func TestRLSInvalid(t *testing.T) {
	clk := fakeclock.New(epoch)
	c := startRLS(t, newMemStore(t, clk), clk, nil)
	tests := map[string]*rlsv3.RateLimitRequest{
		"no domain":      {Descriptors: descs(desc("a", "b"))},
		"no descriptors": {Domain: "internal"},
		"empty":          {},
	}
	for name, req := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := c.ShouldRateLimit(context.Background(), req)
			assert.Equal(t, codes.InvalidArgument, status.Code(err))
		})
	}
	// odd but valid: empty entries, huge hits, an override the buckets cannot keep
	for name, req := range map[string]*rlsv3.RateLimitRequest{
		"empty descriptor": {Domain: "internal", Descriptors: descs(desc())},
		"huge hits":        {Domain: "internal", HitsAddend: math.MaxUint32, Descriptors: descs(withHits(desc("azure", "z"), math.MaxUint64))},
		"override":         {Domain: "internal", Descriptors: descs(&rlcommon.RateLimitDescriptor{Entries: desc("k", "v").Entries, Limit: &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 3, Unit: 2}})},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := c.ShouldRateLimit(context.Background(), req)
			assert.NoError(t, err)
		})
	}
}

// TestRLSFleetShares: calls spread over both members of a fleet keep the
// fleet's limit: never more than it is admitted, and at most one call per
// member less (a member's lease may hold the last units).
func TestRLSFleetShares(t *testing.T) {
	tests := map[string]struct {
		domain string
		d      *rlcommon.RateLimitDescriptor
		limit  int
	}{
		"key only, 10 a second":  {"edge_proxy_per_ip", desc("remote_address", "50.0.0.1"), 10},
		"nested, 5 a day":        {"messaging", desc("message_type", "marketing", "to_number", "1"), 5},
		"value match, 500 a sec": {"mongo_cps", desc("database", "users"), 500},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(epoch)
			clients := startFleetRLS(t, clk)
			admitted := 0
			for i := range 3 * tc.limit {
				resp, err := clients[i%2].ShouldRateLimit(context.Background(),
					&rlsv3.RateLimitRequest{Domain: tc.domain, Descriptors: descs(tc.d)})
				require.NoError(t, err)
				if resp.GetOverallCode() == rlsv3.RateLimitResponse_OK {
					admitted++
				}
			}
			assert.LessOrEqual(t, admitted, tc.limit)
			assert.GreaterOrEqual(t, admitted, tc.limit-2)
		})
	}
}
