package admission_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/cluster"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/policy"
)

// fleetProbes shortens memberlist's failure detection on loopback.
func fleetProbes(c *memberlist.Config) {
	c.ProbeInterval, c.ProbeTimeout = 100*time.Millisecond, 50*time.Millisecond
	c.GossipInterval, c.SuspicionMult = 20*time.Millisecond, 2
	c.PushPullInterval, c.TCPTimeout = time.Second, time.Second
}

// reserveFleet starts n Tollgates sharing one Redis under one prefix, each
// with its own gossip node, lease store and admission Service on policy
// y, and waits until each sees all. It returns the Services and a plain
// Redis store on the same prefix, for reading levels.
func reserveFleet(t *testing.T, n int, y string) ([]*admission.Service, *redisstore.Store, *policy.Set) {
	t.Helper()
	set, err := policy.Compile(policy.Source{Name: "reserve.yaml", Data: []byte(y)})
	require.NoError(t, err)
	prefix := redistest.Prefix(t)
	key := []byte("0123456789abcdef0123456789abcdef")
	var (
		fleets   []*cluster.Fleet
		services []*admission.Service
	)
	for i := range n {
		rs, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: prefix})
		require.NoError(t, err)
		var seeds []string
		if i > 0 {
			seeds = []string{fleets[0].Node.Addr()}
		}
		ncfg := cluster.NodeConfig{Name: fmt.Sprintf("m%d", i), BindAddr: "127.0.0.1", Seeds: seeds, Key: key,
			DemandEvery: 50 * time.Millisecond, RejoinEvery: 200 * time.Millisecond, Tune: fleetProbes}
		f, err := cluster.Join(ncfg, cluster.DefaultConfig(), rs, prometheus.NewRegistry())
		require.NoError(t, err)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			assert.NoError(t, f.Close(ctx))
		})
		fleets = append(fleets, f)
		s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
			Policies: admission.StaticPolicy{Set: set}, Store: f.Store, Registerer: prometheus.NewRegistry()})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.Close()) })
		services = append(services, s)
	}
	require.Eventually(t, func() bool {
		for _, f := range fleets {
			if f.Node.Live() != n {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "members see %d live", n)
	reader, err := redisstore.New(srv.Client(t), redisstore.Config{Prefix: prefix})
	require.NoError(t, err)
	return services, reader, set
}

// fleetAdmit sends per calls for client from every member at once and
// counts those admitted; any refusal but rate_limited fails the test.
func fleetAdmit(t *testing.T, services []*admission.Service, client string, per int) int64 {
	t.Helper()
	var (
		admitted atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		odd      []string
	)
	for m, s := range services {
		wg.Go(func() {
			for i := range per {
				r := apiRequest("")
				r.ID, r.Client = fmt.Sprintf("%s-m%d-%d", client, m, i), client
				v := s.Decide(context.Background(), r)
				switch {
				case v.Allowed:
					admitted.Add(1)
				case v.Reason != "rate_limited":
					mu.Lock()
					odd = append(odd, v.Reason+"@"+v.Pool)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	require.Empty(t, odd[:min(len(odd), 5)], "refusals other than rate_limited (%d)", len(odd))
	return admitted.Load()
}

// fleetPolicy is reservePolicy with a pool of 300 calls refilling 300 a
// day (nothing a test could see refills while it runs) and room for every
// call in flight (they are never settled here).
func fleetPolicy(pool string) string {
	y := reservePolicy(pool)
	y = replaceOnce(y, "capacity: 10\n    refill: 10/d", "capacity: 300\n    refill: 300/d")
	y = replaceOnce(y, "enterprise: {priority: 40, max_concurrent: 100}", "enterprise: {priority: 40, max_concurrent: 1000}")
	return replaceOnce(y, "basic: {priority: 10, max_concurrent: 100}", "basic: {priority: 10, max_concurrent: 1000}")
}

func replaceOnce(s, old, new string) string {
	i := strings.Index(s, old)
	if i < 0 {
		panic("replaceOnce: no " + old)
	}
	return s[:i] + new + s[i+len(old):]
}

// TestReservedFleet: three members on one Redis, each deciding through
// leases. Others flood the pool from every member at once; then the owner
// does. The counts hold to the split exactly: others never get more than
// the shared part (and, lend: idle, the lent part); the owner always gets
// at least its share that others can never touch; a dedicated client never
// touches the shared pool and others never touch its own.
func TestReservedFleet(t *testing.T) {
	const members, per = 3, 120 // 360 calls a phase, more than the pool's 300
	tests := map[string]struct {
		pool string
		// bobMax is the most bob (basic) may get; acmeMin the least acme
		// (enterprise) gets after bob; untouched the bucket bob never
		// charges, with its full level.
		bobMax, acmeMin int64
		untouched       func(set *policy.Set) (limiter.Key, policy.Limit)
	}{
		"never lent": {
			pool:   reserveNever, // 30%: 90 reserved, 210 shared
			bobMax: 210, acmeMin: 90,
			untouched: func(set *policy.Set) (limiter.Key, policy.Limit) {
				r := set.Pools["api"].Reserved[0]
				return limiter.Key{Pool: "api", Client: r.Kept.Key}, r.Kept.Limit
			},
		},
		"lend idle": {
			pool:   reserveIdle, // 40%, keep 50%: 60 kept, 60 lent, 180 shared
			bobMax: 240, acmeMin: 60,
			untouched: func(set *policy.Set) (limiter.Key, policy.Limit) {
				r := set.Pools["api"].Reserved[0]
				return limiter.Key{Pool: "api", Client: r.Kept.Key}, r.Kept.Limit
			},
		},
		"dedicated": {
			pool:   replaceOnce(reserveDedicated, "capacity: 5\n    refill: 5/d", "capacity: 50\n    refill: 50/d"),
			bobMax: 300, acmeMin: 50,
			untouched: func(set *policy.Set) (limiter.Key, policy.Limit) {
				return limiter.Key{Pool: "api-acme"}, set.Pools["api-acme"].Limit
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			services, reader, set := reserveFleet(t, members, fleetPolicy(tc.pool))
			bob := fleetAdmit(t, services, "bob", per)
			assert.LessOrEqual(t, bob, tc.bobMax, "bob never gets more than the shared and lent parts")
			key, lim := tc.untouched(set)
			assert.Equal(t, lim.Capacity, partLevel(t, reader, key, lim), "bob never touched %v", key)

			acme := fleetAdmit(t, services, "acme", per)
			assert.GreaterOrEqual(t, acme, tc.acmeMin, "acme always gets the part no one else may touch")
			total := set.Pools["api"].Limit.Capacity
			if d := set.Pools["api-acme"]; d != nil {
				total += d.Limit.Capacity
				assert.LessOrEqual(t, acme, d.Limit.Capacity, "acme spends its dedicated pool only")
			} else {
				assert.LessOrEqual(t, acme, tc.acmeMin+tc.bobMax-bob, "acme: its share and what bob left")
			}
			assert.LessOrEqual(t, bob+acme, total, "the fleet never admits more than the pools hold")
			t.Logf("%s: bob %d (at most %d), acme %d (at least %d)", name, bob, tc.bobMax, acme, tc.acmeMin)
		})
	}
}
