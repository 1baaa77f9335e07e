package main

// One store's soak, from the first process started to the last stopped.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate/tollgate/internal/procstat"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/policy"
)

// Waits of the soak's own, each a bound on something that should take
// far less.
const (
	restReads   = 5                // readings at rest, 200 ms apart, of which the median counts
	queueEmpty  = 30 * time.Second // for held calls to be answered once the traffic stops
	fleetForms  = 20 * time.Second // for a fleet's members to see each other
	stopTimeout = 30 * time.Second // from SIGTERM to exit
)

// timed is a reading and when it was taken.
type timed struct {
	at time.Time
	reading
}

// soakStore runs one store's soak. It returns a report whenever the soak
// ran far enough to have one; an error means it could not run as planned.
func soakStore(ctx context.Context, c config, store string, progress io.Writer) (rep *storeReport, err error) {
	set, err := policy.Load(c.policy)
	if err != nil {
		return nil, err
	}
	ttl := set.Defaults.ReservationTTL
	dir, err := os.MkdirTemp("", "tollgate-soak-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	token, tokenFile, err := secretFile(dir, "api-token", hex.EncodeToString)
	if err != nil {
		return nil, err
	}

	// The store's flags. Ended reservations' outcomes are kept for 60 s
	// rather than 24 h, so that the memory store's table of them (bounded
	// by design, and growing for hours at the default) is at its steady
	// size before the baseline, and what grows after it is a leak.
	extra := []string{"--store", store, "--ended-retention", "60s"}
	var rdb *redis.Client
	var redisPort int
	if store == "memory" {
		extra = append(extra, "--ended-max", "20000")
	} else {
		srv, serr := redistest.Start()
		if serr != nil {
			return nil, serr
		}
		defer func() { err = errors.Join(err, srv.Close()) }()
		rdb = redis.NewClient(&redis.Options{Addr: srv.Addr})
		_, port, _ := strings.Cut(srv.Addr, ":")
		redisPort, _ = strconv.Atoi(port)
		defer rdb.Close()
		// Redis timeouts of a second rather than 100 ms: on a shared
		// machine a stall of the soak's redis-server is noise, and the soak
		// is about what stays behind, not latency; a store error it sees is
		// then a fault of Tollgate's.
		extra = []string{"--store", "redis", "--ended-retention", "60s", "--redis-addr", srv.Addr,
			"--redis-prefix", fmt.Sprintf("soak-%d", time.Now().UnixNano()),
			"--redis-read-timeout", "1s", "--redis-write-timeout", "1s"}
	}
	n := 1
	var keyFile string
	if store == "cluster" {
		n = c.members
		if _, keyFile, err = secretFile(dir, "gossip-key", base64.StdEncoding.EncodeToString); err != nil {
			return nil, err
		}
	}

	rep = &storeReport{Store: store, Duration: c.duration, Warmup: c.warmup, Drained: -1}
	fmt.Fprintf(progress, "soak %s: starting %d member(s) of %s\n", store, n, c.bin)
	var members []*member
	stopped := false
	defer func() {
		if !stopped {
			for _, m := range members {
				_, _ = m.stop(stopTimeout)
			}
		}
	}()
	for i := range n {
		sp := memberSpec{bin: c.bin, name: store, policy: c.policy, token: token, tokenFile: tokenFile, redisPort: redisPort, extra: extra}
		var gossip string
		if store == "cluster" {
			if gossip, err = freeGossipAddr(); err != nil {
				return nil, err
			}
			_, port, _ := strings.Cut(gossip, ":")
			sp.name = fmt.Sprintf("cluster-%d", i)
			sp.extra = append(slices.Clone(extra), "--cluster", "--node-name", sp.name, "--gossip-addr", "127.0.0.1",
				"--gossip-port", port, "--gossip-key-file", keyFile)
			if i > 0 {
				sp.extra = append(sp.extra, "--cluster-seeds", members[0].gossipAddr)
			}
		}
		m, err := startMember(ctx, sp, c.startTimeout)
		if m != nil {
			m.gossipAddr = gossip
			members = append(members, m)
		}
		if err != nil {
			return nil, err
		}
	}
	if store == "cluster" {
		if err := waitFleet(ctx, members); err != nil {
			return nil, err
		}
	}
	r, err := newRig(members, c.envoyConfig)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, r.close()) }()

	// Read every member every c.every until the end; a member that exits
	// stops the traffic.
	tctx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	samples := make([][]timed, len(members))
	var dead []string
	var sampling sync.WaitGroup
	sctx, stopSampling := context.WithCancel(ctx)
	sampling.Go(func() {
		tick := time.NewTicker(c.every)
		defer tick.Stop()
		for {
			for i, m := range members {
				if err := m.alive(); err != nil {
					dead = append(dead, err.Error())
					stopTraffic()
					return
				}
				rd, err := m.read(sctx)
				if err == nil {
					samples[i] = append(samples[i], timed{time.Now(), rd})
				}
			}
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	defer func() { stopSampling(); sampling.Wait() }()

	var kinds []kind
	for _, k := range append(mixedKinds(), hostileKinds()...) {
		if c.kinds.MatchString(k.name) {
			kinds = append(kinds, k)
		}
	}
	seq, t := &seqs{}, &tallies{}
	fmt.Fprintf(progress, "soak %s: warm-up, %v of traffic\n", store, c.warmup)
	drive(tctx, r, kinds, c.scale, c.warmup, seq, t)
	before, err := atRest(tctx, r, c.restQuiet)
	if err != nil {
		return rep, err
	}
	redisBefore := redisFigures(ctx, rdb)
	fmt.Fprintf(progress, "soak %s: %v of traffic, read every %v\n", store, c.duration, c.every)
	calls0, self0, machine0 := t.calls(), cpuOr0(procstat.CPU("self")), cpuOr0(procstat.MachineCPU())
	t0 := time.Now()
	drive(tctx, r, kinds, c.scale, c.duration, seq, t)
	t1 := time.Now()
	rep.Rate = float64(t.calls()-calls0) / t1.Sub(t0).Seconds()
	self1, machine1 := cpuOr0(procstat.CPU("self")), cpuOr0(procstat.MachineCPU())
	fmt.Fprintf(progress, "soak %s: traffic over; draining (up to %v)\n", store, ttl+15*time.Second)
	rep.Kinds = t.m
	drained, left := drain(ctx, r, ttl+15*time.Second)
	if left != "" {
		rep.Problems = append(rep.Problems, "not drained: "+left)
	} else {
		rep.Drained = drained
	}
	rep.Counters, err = counters(ctx, members)
	if err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}
	after, err := atRest(ctx, r, c.restQuiet)
	if err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}
	stopSampling()
	sampling.Wait()
	rep.Problems = append(rep.Problems, dead...)
	if rdb != nil {
		rep.Redis = fmt.Sprintf("before → after the measured traffic: %s → %s", redisBefore, redisFigures(ctx, rdb))
	}

	fmt.Fprintf(progress, "soak %s: stopping with SIGTERM\n", store)
	stopped = true
	rep.Logs = map[string]int64{}
	var membersCPU time.Duration
	for i, m := range members {
		mr := memberReport{Name: m.name}
		var at, rss, gor, heap []float64
		for _, s := range samples[i] {
			if s.at.Before(t0) || s.at.After(t1) {
				continue
			}
			at = append(at, s.at.Sub(t0).Seconds())
			rss, gor, heap = append(rss, s.rss), append(gor, s.goroutines), append(heap, s.heap)
		}
		mr.RSS, mr.Goroutines, mr.Heap = judgeTrend(at, rss, c.rss), judgeTrend(at, gor, c.goroutines), judgeTrend(at, heap, c.rss)
		if first, last, ok := span(samples[i], t0, t1); ok {
			used := last.cpu - first.cpu
			membersCPU += used
			rep.CPU = append(rep.CPU, cpuShare{m.name, share(used, last.at.Sub(first.at))})
		}
		if before != nil && after != nil {
			mr.IdleGo = judgeIdle(before[i].goroutines, after[i].goroutines, c.idleGoroutines)
			// The Redis client's pool grows with load up to its size and
			// keeps its connections: they are counted apart.
			mr.IdleFDs = judgeIdle(before[i].fds-before[i].redis, after[i].fds-after[i].redis, c.idleFDs)
			mr.IdleRedis = [2]float64{before[i].redis, after[i].redis}
		}
		how, err := m.stop(stopTimeout)
		mr.Exit = how
		if err != nil {
			rep.Problems = append(rep.Problems, err.Error())
		}
		logs, foreign, errLines := m.logs.snapshot()
		for k, v := range logs {
			rep.Logs[k] += v
		}
		if len(errLines) > 0 {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s logged at level ERROR, first: %s", m.name, clip(errLines[0])))
		}
		if len(foreign) > 0 {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s wrote %d line(s) that are not its JSON log (a panic?), the first: %s",
				m.name, logs["NOT JSON"], clip(strings.Join(foreign[:min(5, len(foreign))], " | "))))
		}
		rep.Members = append(rep.Members, mr)
	}
	self := self1 - self0
	rep.CPU = append(rep.CPU, cpuShare{"the soak", share(self, t1.Sub(t0))},
		cpuShare{"the rest of the machine", share(max(0, machine1-machine0-self-membersCPU), t1.Sub(t0))})
	proxy, other := r.proxyLog.snapshot()
	rep.Proxy = proxy
	if len(other) > 0 {
		rep.Problems = append(rep.Problems, "the Envoy stand-in failed: "+strings.Join(other, "; "))
	}
	rep.judge()
	return rep, nil
}

// clip shortens a quoted line for the report.
func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

// span is the first and last samples taken between t0 and t1.
func span(ss []timed, t0, t1 time.Time) (timed, timed, bool) {
	var in []timed
	for _, s := range ss {
		if !s.at.Before(t0) && !s.at.After(t1) {
			in = append(in, s)
		}
	}
	if len(in) < 2 {
		return timed{}, timed{}, false
	}
	return in[0], in[len(in)-1], true
}

// share is cpu in percent of one core over d.
func share(cpu, d time.Duration) float64 { return 100 * cpu.Seconds() / max(d.Seconds(), 1e-9) }

// cpuOr0 drops a /proc reader's error: CPU figures are context, not a
// verdict.
func cpuOr0(d time.Duration, _ error) time.Duration { return d }

// secretFile writes 32 random bytes, encoded, to dir/name (0600) and
// returns the encoded secret and the file's path.
func secretFile(dir, name string, encode func([]byte) string) (string, string, error) {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	s := encode(b)
	p := filepath.Join(dir, name)
	return s, p, os.WriteFile(p, []byte(s+"\n"), 0o600)
}

// waitFleet waits until every member sees the whole fleet.
func waitFleet(ctx context.Context, members []*member) error {
	deadline := time.Now().Add(fleetForms)
	for _, m := range members {
		for {
			ms, err := m.metrics(ctx)
			if err == nil && int(ms["tollgate_cluster_members"]) == len(members) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("soak: the fleet did not form: %s sees %v of %d members (%v)", m.name, ms["tollgate_cluster_members"], len(members), err)
			}
			if err := sleep(ctx, 100*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// atRest waits until no member holds a call, closes the soak's idle
// connections, lets the members settle, and reads each of them restReads
// times: the median goroutines and open files are its rest state.
func atRest(ctx context.Context, r *rig, quiet time.Duration) ([]reading, error) {
	deadline := time.Now().Add(queueEmpty)
	for _, m := range r.members {
		for {
			ms, err := m.metrics(ctx)
			if err == nil && ms["tollgate_queue_depth"] == 0 {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%s still holds %v call(s) %v after the traffic (%v)", m.name, ms["tollgate_queue_depth"], queueEmpty, err)
			}
			if err := sleep(ctx, 100*time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
	r.rest()
	if err := sleep(ctx, quiet); err != nil {
		return nil, err
	}
	out := make([]reading, len(r.members))
	for i, m := range r.members {
		var gor, fds, rds []float64
		for range restReads {
			rd, err := m.read(ctx)
			if err != nil {
				return nil, err
			}
			gor, fds, rds = append(gor, rd.goroutines), append(fds, rd.fds), append(rds, rd.redis)
			if err := sleep(ctx, 200*time.Millisecond); err != nil {
				return nil, err
			}
		}
		out[i] = reading{goroutines: median(gor), fds: median(fds), redis: median(rds)}
	}
	return out, nil
}

// drain waits until no member holds, has in flight or has reserved
// anything for any of the soak's clients: every call the soak made has
// ended, been settled, or lapsed at the policy's TTL. It returns how long
// that took, or what was still held at the timeout.
func drain(ctx context.Context, r *rig, timeout time.Duration) (time.Duration, string) {
	start := time.Now()
	for {
		var left []string
		for _, m := range r.members {
			l, err := m.leftovers(ctx, soakClients)
			if err != nil {
				l = err.Error()
			}
			if l != "" {
				left = append(left, m.name+": "+l)
			}
		}
		if len(left) == 0 {
			return time.Since(start), ""
		}
		if time.Since(start) > timeout || sleep(ctx, 500*time.Millisecond) != nil {
			return time.Since(start), fmt.Sprintf("%v after the traffic: %s", time.Since(start).Round(time.Second), strings.Join(left, "; "))
		}
	}
}

// counted are the members' counters the report sums, split by the labels
// given.
var counted = []struct {
	name   string
	labels []string
}{
	{"tollgate_authz_decisions_total", []string{"outcome", "reason"}},
	{"tollgate_settle_calls_total", []string{"outcome", "reason"}},
	{"tollgate_queue_exits_total", []string{"outcome"}},
	{"tollgate_authz_reservations_expired_total", nil},
	{"tollgate_authz_store_errors_total", nil},
	{"tollgate_settle_store_errors_total", nil},
	{"tollgate_authz_api_unauthorized_total", nil},
	{"tollgate_authz_api_settle_refused_total", nil},
	{"tollgate_settle_usage_capped_total", nil},
}

// counters sums the counted counters over the members. Those that count
// what Tollgate must not do under the soak (a store error, a settle that
// failed, a decision that errored other than for a caller who left) are
// returned as an error too.
func counters(ctx context.Context, members []*member) (map[string]float64, error) {
	out := map[string]float64{}
	for _, m := range members {
		ms, err := m.metrics(ctx)
		if err != nil {
			return out, err
		}
		for series, v := range ms {
			for _, c := range counted {
				if len(c.labels) == 0 && series == c.name {
					out[short(c.name)] += v
				}
				if rest, ok := strings.CutPrefix(series, c.name+"{"); ok && len(c.labels) > 0 {
					key := short(c.name)
					for _, l := range c.labels {
						key += " " + l + "=" + labelValue(rest, l)
					}
					out[key] += v
				}
			}
		}
	}
	var bad []string
	for k, v := range out {
		if v == 0 {
			continue
		}
		switch {
		case k == "authz_store_errors", k == "settle_store_errors",
			strings.HasPrefix(k, "settle_calls outcome=failed"),
			strings.HasPrefix(k, "authz_decisions outcome=error") && k != "authz_decisions outcome=error reason=cancelled":
			bad = append(bad, fmt.Sprintf("%s ×%v", k, v))
		}
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		return out, fmt.Errorf("tollgate counted failures: %s", strings.Join(bad, ", "))
	}
	return out, nil
}

// short drops a counter's tollgate_ prefix and _total suffix.
func short(name string) string {
	return strings.TrimSuffix(strings.TrimPrefix(name, "tollgate_"), "_total")
}

// labelValue finds label="value" in a series' labels (after the "{").
func labelValue(labels, label string) string {
	_, rest, ok := strings.Cut(labels, label+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// redisFigures is what Redis holds: its memory and keys.
func redisFigures(ctx context.Context, rdb *redis.Client) string {
	if rdb == nil {
		return ""
	}
	info, err := rdb.InfoMap(ctx, "memory").Result()
	keys, kerr := rdb.DBSize(ctx).Result()
	if err = errors.Join(err, kerr); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("used_memory %s, %d keys", info["Memory"]["used_memory_human"], keys)
}
