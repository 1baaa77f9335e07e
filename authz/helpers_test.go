package authz_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

// epoch is where every fake clock starts: a whole second, so that bucket
// arithmetic in microseconds reads cleanly.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// compilePolicy compiles an inline YAML policy and fails the test on error.
func compilePolicy(tb testing.TB, yaml string) *policy.Set {
	tb.Helper()
	s, err := policy.Compile(policy.Source{Name: "t.yaml", Data: []byte(yaml)})
	require.NoError(tb, err)
	return s
}

// newMemStore returns a memory store on clk (no sweeper) closed at cleanup.
func newMemStore(tb testing.TB, clk limiter.Clock) *memstore.Store {
	tb.Helper()
	s, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, s.Close()) })
	return s
}

// Decider is admission's service as the transport renders its answers:
// what these tests assert on (statuses, messages, headers).
type Decider struct{ *admission.Service }

// Decide decides r and renders the verdict.
func (d *Decider) Decide(ctx context.Context, r *admission.Request) authz.Answer {
	return authz.Render(d.Service.Decide(ctx, r))
}

type deciderOpt func(*admission.Config, *admission.Deps)

func withClock(c limiter.Clock) deciderOpt {
	return func(_ *admission.Config, d *admission.Deps) { d.Clock = c }
}

func withCache(c respcache.Cache) deciderOpt {
	return func(_ *admission.Config, d *admission.Deps) { d.Cache = c }
}

func withSettlement(s admission.Settlement) deciderOpt {
	return func(c *admission.Config, _ *admission.Deps) { c.Settlement = s }
}

// newTestDecider builds an admission service on set and store, with its
// metrics in reg (immediate settlement and the system clock unless opts
// say otherwise).
func newTestDecider(tb testing.TB, set *policy.Set, store admission.Store, reg prometheus.Registerer, log *slog.Logger, opts ...deciderOpt) *Decider {
	tb.Helper()
	cfg, deps := admission.Config{}, admission.Deps{Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: reg, Logger: log}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	s, err := admission.New(cfg, deps)
	require.NoError(tb, err)
	return &Decider{Service: s}
}

// decider is a Decider on a fresh registry, a fake clock and a memory store.
type decider struct {
	*Decider
	reg   *prometheus.Registry
	clk   *fakeclock.Clock
	store *memstore.Store
}

func newDecider(tb testing.TB, yaml string) *decider {
	tb.Helper()
	clk := fakeclock.New(epoch)
	store := newMemStore(tb, clk)
	reg := prometheus.NewRegistry()
	d := &decider{
		Decider: newTestDecider(tb, compilePolicy(tb, yaml), store, reg, nil, withClock(clk)),
		reg:     reg, clk: clk, store: store,
	}
	tb.Cleanup(func() { require.NoError(tb, d.Close()) })
	return d
}

// remaining reads a bucket's whole units left without charging it (a zero
// cost take is always granted and reports the bucket's level).
func (d *decider) remaining(tb testing.TB, key limiter.Key, l policy.Limit) int64 {
	tb.Helper()
	dec, err := d.store.Reserve(context.Background(), limiter.Request{Takes: []limiter.Take{{Key: key, Limit: limiter.Limit(l), Cost: 0}}})
	require.NoError(tb, err)
	return dec.Buckets[0].Remaining
}

// metricValue gathers g and returns the value of the counter or gauge name
// whose labels are exactly labels; zero when there is none.
func metricValue(tb testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	tb.Helper()
	mfs, err := g.Gather()
	require.NoError(tb, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !labelsEqual(m.GetLabel(), labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func labelsEqual(got []*dto.LabelPair, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for _, lp := range got {
		if v, ok := want[lp.GetName()]; !ok || v != lp.GetValue() {
			return false
		}
	}
	return true
}

// decisionLabels are the labels of tollgate_authz_decisions_total.
func decisionLabels(pool, tier string, outcome admission.Outcome, reason string) map[string]string {
	return map[string]string{"pool": pool, "tier": tier, "outcome": string(outcome), "reason": reason}
}

// requireLint runs promlint over everything g gathers.
func requireLint(tb testing.TB, g prometheus.Gatherer) {
	tb.Helper()
	problems, err := testutil.GatherAndLint(g)
	require.NoError(tb, err)
	require.Empty(tb, problems, "promlint")
}

// chatBody is an OpenAI chat completion body; maxTokens < 0 leaves the
// field out.
func chatBody(model string, maxTokens int, prompt string) []byte {
	mt := ""
	if maxTokens >= 0 {
		mt = fmt.Sprintf(`,"max_tokens":%d`, maxTokens)
	}
	return fmt.Appendf(nil, `{"model":%q%s,"messages":[{"role":"user","content":%q}]}`, model, mt, prompt)
}

// tokens is what the estimator charges a token pool for an OpenAI chat
// body: its input tokens, counted by the costing package (tested there
// against OpenAI's own tokenizer), plus the output allowance.
func tokens(maxTokens int64, body []byte) int64 {
	tok, err := costing.SharedTokenizer()
	if err != nil {
		panic(err)
	}
	q, err := costing.ParseOpenAI("/v1/chat/completions", body, tok)
	if err != nil {
		panic(err)
	}
	return q.InputTokens + maxTokens
}

// kiloChatBody is a realistic ~1 KB chat body.
func kiloChatBody(model string) []byte {
	prompt := strings.Repeat("Summarise the quarterly report in three bullet points. ", 17)
	return chatBody(model, 256, prompt)
}

// failingStore is a store whose every call fails.
type failingStore struct{ err error }

var _ admission.Store = failingStore{}

func (s failingStore) Reserve(context.Context, limiter.Request) (limiter.Decision, error) {
	return limiter.Decision{}, s.err
}
func (s failingStore) Settle(context.Context, string, policy.Money) (limiter.Settlement, error) {
	return limiter.Settlement{}, s.err
}
func (s failingStore) Release(context.Context, string) (limiter.Settlement, error) {
	return limiter.Settlement{}, s.err
}
func (s failingStore) Finish(context.Context, limiter.Ending) (limiter.Settlement, error) {
	return limiter.Settlement{}, s.err
}
func (s failingStore) Expire(context.Context, time.Time, int) (int, error) { return 0, s.err }
func (s failingStore) Usage(context.Context, string, []limiter.Budget, time.Time) (limiter.Usage, error) {
	return limiter.Usage{}, s.err
}
func (s failingStore) Refund(context.Context, []limiter.Refund, time.Time) ([]limiter.BucketState, error) {
	return nil, s.err
}
func (s failingStore) Throttle(context.Context, []limiter.Throttle, time.Time) ([]limiter.BucketState, error) {
	return nil, s.err
}
func (s failingStore) Book(context.Context, string, []limiter.SpendDelta) (bool, error) {
	return false, s.err
}
func (s failingStore) Peek(context.Context, limiter.Request) (limiter.Decision, error) {
	return limiter.Decision{}, s.err
}
func (s failingStore) History(context.Context, string, []string) ([]limiter.HistoryRow, error) {
	return nil, s.err
}
func (s failingStore) CostRecord(context.Context, string) (limiter.CostRecord, error) {
	return limiter.CostRecord{}, s.err
}
func (failingStore) Close() error { return nil }

// blockingStore is a store whose Reserve announces itself on entered and
// then waits for release (or ctx) before asking next. Safe for concurrent
// use.
type blockingStore struct {
	admission.Store
	entered   chan struct{}
	release   chan struct{}
	closeOnce sync.Once
}

func newBlockingStore(next admission.Store) *blockingStore {
	return &blockingStore{Store: next, entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (s *blockingStore) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	select {
	case <-s.release:
	case <-ctx.Done():
		return limiter.Decision{}, ctx.Err()
	}
	return s.Store.Reserve(ctx, req)
}

// Unblock lets every Reserve, present and future, through.
func (s *blockingStore) Unblock() { s.closeOnce.Do(func() { close(s.release) }) }

func (s *blockingStore) Close() error { s.Unblock(); return s.Store.Close() }

// errStoreDown is what failingStore returns in tests.
var errStoreDown = errors.New("store unreachable")

// recv waits for one value from ch; the guard only turns a hang into a
// failure and never decides an outcome.
func recv[T any](tb testing.TB, ch <-chan T) T {
	tb.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		tb.Fatal("timed out waiting on a channel")
		var zero T
		return zero
	}
}

// policyMoney is a nano-dollar count as Money.
func policyMoney(n int64) policy.Money { return policy.Money(n) }
