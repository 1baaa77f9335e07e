package admission

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/costing/optimize"
	"github.com/tollgate/tollgate/policy"
)

// observeTestPolicy is observeBase with one downgrade rule.
const observeTestPolicy = observeBase + `
optimize:
  rules:
    - name: o3-to-4o
      when: {models: ["o3"]}
      downgrade: gpt-4o-mini
`

const observeBase = `
defaults: {unknown_client: deny}
pools:
  gpt: {unit: token, capacity: 100000, refill_per_second: 1000}
  sms: {unit: segment, capacity: 100, refill_per_second: 1, price: "0.0079"}
models:
  "gpt-4o-mini*": {input: "0.15/1M", output: "0.60/1M"}
  "gpt-4o-nano*": {input: "0.05/1M", output: "0.20/1M"}
  "gpt-4o*": {input: "2.50/1M", output: "10/1M"}
  "gpt-4.1-nano": {input: "0.10/1M", output: "0.40/1M"}
  "gpt-4.1*": {input: "2/1M", output: "8/1M"}
  "gpt-5-mini-pricey*": {input: "5/1M", output: "50/1M"}
  "gpt-5*": {input: "1.25/1M", output: "10/1M"}
  "o3-mini*": {input: "1.10/1M", output: "4.40/1M"}
  "o3*": {input: "2/1M", output: "8/1M"}
routes:
  openai: {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [gpt]}
  twilio: {host: api.twilio.com, path_prefix: /2010-04-01/, provider: twilio, pools: [sms]}
tiers:
  basic: {priority: 10, max_concurrent: 5}
clients:
  acme: {tier: basic}
`

func observeSet(t *testing.T) *policy.Set {
	t.Helper()
	set, err := policy.Compile(policy.Source{Name: "t.yaml", Data: []byte(observeTestPolicy)})
	require.NoError(t, err)
	return set
}

// observedCall is a settled call of client to model, for the book.
func observedCall(set *policy.Set, client, model string, strategies ...string) (*pendingCall, costing.Usage, costing.Actual) {
	m, _ := set.Model(model)
	p := &pendingCall{set: set, route: set.Route("openai"), client: client, class: policy.Batch,
		est: costing.Estimate{Model: model, PriceEntry: m.Name, Kind: costing.KindChat}}
	if len(strategies) > 0 {
		p.opt = &optimized{orig: p.est}
		for _, s := range strategies {
			p.opt.applied = append(p.opt.applied, optimizeApplied(s))
		}
	}
	return p, costing.Usage{InputTokens: 100, OutputTokens: 50}, costing.Actual{Cost: 1000}
}

func optimizeApplied(strategy string) optimize.Applied {
	return optimize.Applied{Edit: optimize.Edit{Strategy: optimize.Strategy(strategy)}}
}

// TestObserveBookBounded: the book never holds more clients or lines per
// client than its bounds; the least recently settled client and line go
// first, and a client's rewrite counts outlive its evicted lines.
func TestObserveBookBounded(t *testing.T) {
	set := observeSet(t)
	now := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC)
	b := newObserveBook(3, 2)
	for i := range 5 {
		for _, model := range []string{"gpt-4o", "gpt-4.1", "gpt-5"} {
			p, u, a := observedCall(set, fmt.Sprintf("c%d", i), model, "flex")
			b.note(now, p, u, a, true)
			clients, lines := b.size()
			require.LessOrEqual(t, clients, 3)
			require.LessOrEqual(t, lines, 3*2)
		}
	}
	clients, lines := b.size()
	assert.Equal(t, 3, clients)
	assert.Equal(t, 6, lines)
	for _, gone := range []string{"c0", "c1"} {
		entries, calls, _ := b.client("2026-01", gone)
		assert.Empty(t, entries, gone)
		assert.Zero(t, calls, gone)
	}
	entries, calls, rewrites := b.client("2026-01", "c4")
	assert.Equal(t, int64(3), calls)
	assert.Equal(t, map[string]int64{"flex": 3}, rewrites, "counted per client, whatever lines were evicted")
	var models []string
	for _, e := range entries {
		models = append(models, e.key.model)
	}
	assert.ElementsMatch(t, []string{"gpt-4.1", "gpt-5"}, models, "the least recently settled line went")

	// Touching c2 keeps it over c3 when a new client comes.
	p, u, a := observedCall(set, "c2", "gpt-5")
	b.note(now, p, u, a, false)
	p, u, a = observedCall(set, "c5", "gpt-5")
	b.note(now, p, u, a, false)
	for id, kept := range map[string]bool{"c2": true, "c3": false, "c4": true, "c5": true} {
		_, calls, _ := b.client("2026-01", id)
		assert.Equal(t, kept, calls > 0, id)
	}

	t.Run("the default bounds hold under a flood of clients and models", func(t *testing.T) {
		b := newObserveBook(maxObservedClients, maxObservedKeys)
		for i := range maxObservedClients + 100 {
			for j := range maxObservedKeys + 3 {
				p, u, a := observedCall(set, fmt.Sprintf("client-%d", i), fmt.Sprintf("gpt-4o-%d-%s", j, string(make([]byte, 100))))
				b.note(now, p, u, a, false)
			}
		}
		clients, lines := b.size()
		assert.Equal(t, maxObservedClients, clients)
		assert.Equal(t, maxObservedClients*maxObservedKeys, lines)
		entries, _, _ := b.client("2026-01", fmt.Sprintf("client-%d", maxObservedClients+99))
		require.NotEmpty(t, entries)
		assert.Len(t, entries[0].key.model, maxObservedModelLen, "a model name is cut")
	})
}

// TestObserveBookPeriod: a new period starts the book empty, whether a
// call or a read brings it.
func TestObserveBookPeriod(t *testing.T) {
	set := observeSet(t)
	b := newObserveBook(10, 10)
	jan := time.Date(2026, 1, 31, 23, 0, 0, 0, time.UTC)
	p, u, a := observedCall(set, "acme", "gpt-4o")
	b.note(jan, p, u, a, false)
	_, calls, _ := b.client("2026-01", "acme")
	assert.Equal(t, int64(1), calls)

	b.note(jan.Add(2*time.Hour), p, u, a, false)
	entries, calls, _ := b.client("2026-02", "acme")
	assert.Equal(t, int64(1), calls, "February holds February's call alone")
	require.Len(t, entries, 1)
	assert.Equal(t, int64(1), entries[0].line.calls)

	_, calls, _ = b.client("2026-03", "acme")
	assert.Zero(t, calls)
	clients, _ := b.size()
	assert.Zero(t, clients, "a read in a new period empties the book")

	t.Run("calls off token routes are not kept", func(t *testing.T) {
		p := &pendingCall{set: set, route: set.Route("twilio"), client: "acme"}
		b.note(jan, p, costing.Usage{Segments: 2}, costing.Actual{Cost: 15_800_000}, false)
		clients, _ := b.size()
		assert.Zero(t, clients)
	})
}

// TestDowngradeTarget: the policy's own downgrade target first, else the
// family's -mini, else its -nano, never one that is dearer on input or
// output, and nothing for a model with no smaller sibling.
func TestDowngradeTarget(t *testing.T) {
	set := observeSet(t)
	tests := map[string]struct{ model, want string }{
		"family mini before nano":         {"gpt-4o", "gpt-4o-mini"},
		"a dated snapshot":                {"gpt-4o-2024-08-06", "gpt-4o-mini"},
		"an exact nano entry":             {"gpt-4.1", "gpt-4.1-nano"},
		"a dearer mini is no downgrade":   {"gpt-5", ""},
		"the policy's rule first":         {"o3", "gpt-4o-mini"},
		"the rule's models must match":    {"o3-pro", "o3-mini"},
		"nothing smaller than the mini":   {"gpt-4o-mini", ""},
		"an unpriced model has no family": {"mystery", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, _ := set.Model(tc.model)
			entry := ""
			if m != nil {
				entry = m.Name
			}
			assert.Equal(t, tc.want, downgradeTarget(set, tc.model, entry))
		})
	}
}

// TestObservationPrices: what a short call would have saved at the
// cheaper model is priced on the call's own usage, as it is billed.
func TestObservationPrices(t *testing.T) {
	set := observeSet(t)
	p, _, _ := observedCall(set, "acme", "gpt-4o")
	tests := map[string]struct {
		u         costing.Usage
		wantShort bool
		wantSaved policy.Money
	}{
		// gpt-4o: 1 × 2,500 + 299 × 10,000 nanos; gpt-4o-mini: 1 × 150 + 299 × 600.
		"short":              {u: costing.Usage{InputTokens: 1, OutputTokens: 299}, wantShort: true, wantSaved: 2_992_500 - 179_550},
		"300 is not short":   {u: costing.Usage{InputTokens: 1, OutputTokens: 300}},
		"no output is short": {u: costing.Usage{InputTokens: 1000}, wantShort: true, wantSaved: 2_500_000 - 150_000},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, l, _ := observation(p, tc.u, costing.Actual{}, false)
			assert.Equal(t, tc.wantShort, l.short == 1)
			assert.Equal(t, tc.wantSaved, l.downSaved)
			if tc.wantShort {
				assert.Equal(t, "gpt-4o-mini", l.downTo)
			}
			assert.Zero(t, l.flexSaved, "gpt-4o has no flex prices")
		})
	}
}
