package admission_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// sink is a DecisionLog that keeps what it is given.
type sink struct {
	mu        sync.Mutex
	decisions []admission.DecisionRecord
	settles   []admission.SettleRecord
}

func (s *sink) Decision(r admission.DecisionRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.decisions = append(s.decisions, r)
}

func (s *sink) Settled(r admission.SettleRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settles = append(s.settles, r)
}

// TestDecisionLogSink: every decision reaches the sink with its numbers,
// every settle (ext_proc's, the API's, a release) with its actual cost;
// nothing of the body or headers.
func TestDecisionLogSink(t *testing.T) {
	set, err := policy.Compile(policy.Source{Name: "settle.yaml", Data: []byte(settlePolicy)})
	require.NoError(t, err)
	clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
	store, err := memstore.New(memstore.Config{Clock: clk})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, store.Close()) })
	log := &sink{}
	s, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
		Policies: admission.StaticPolicy{Set: set}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk, DecisionLog: log})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	ctx := context.Background()
	body := `{"model":"gpt-4o","max_tokens":500,"messages":[{"role":"user","content":"secret prompt"}]}`

	var ids []string
	for range 3 {
		r := chatRequest(body)
		r.Headers["authorization"] = "Bearer sk-secret"
		v := s.Decide(ctx, r)
		require.True(t, v.Allowed)
		ids = append(ids, v.Reservation)
	}
	unknown := chatRequest(body)
	unknown.Client = "nobody"
	require.False(t, s.Decide(ctx, unknown).Allowed)

	clk.Advance(time.Second)
	c := s.Follow(ids[0], "openai", "POST")
	c.ResponseHeaders(ctx, 200, map[string]string{"content-type": "application/json"})
	c.ResponseBody(chatResponse, true)
	c.ResponseEnded()
	require.Equal(t, admission.SettledActual, c.End(ctx))
	_, err = s.Settle(ctx, ids[1], 7)
	require.NoError(t, err)
	_, err = s.Release(ctx, ids[2])
	require.NoError(t, err)

	require.Len(t, log.decisions, 4)
	d := log.decisions[0]
	assert.Equal(t, "req", d.RequestID)
	assert.Equal(t, ids[0], d.Reservation)
	assert.Equal(t, "acme", d.Client)
	assert.Equal(t, "team", d.Tier)
	assert.Equal(t, "openai", d.Route)
	assert.Equal(t, "immediate", d.Class)
	assert.Equal(t, "api.openai.com", d.Host)
	assert.Equal(t, "gpt-4o", d.Model)
	assert.Equal(t, "gpt-4o", d.RequestedModel)
	assert.Equal(t, string(admission.OutcomeAllowed), d.Outcome)
	assert.Equal(t, int64(500), d.OutputTokens)
	assert.Equal(t, []admission.PoolUnits{{Pool: "gpt", Units: d.InputTokens + 500}}, d.Pools)
	assert.Equal(t, policy.Money(d.InputTokens*2500+500*10_000), d.Estimate)
	assert.Equal(t, clk.Now().Add(-time.Second), d.Time)
	assert.Equal(t, admission.ReasonUnknownClient, log.decisions[3].Reason)
	assert.NotContains(t, strings.ToLower(stringsOf(log.decisions)), "secret")

	require.Len(t, log.settles, 3)
	assert.Equal(t, admission.SettleRecord{Time: clk.Now(), RequestID: "req", Reservation: ids[0], Client: "acme", Tier: "team",
		Route: "openai", Model: "gpt-4o", Outcome: "settled", Estimate: d.Estimate, Actual: 40*2500 + 12*10_000,
		InputTokens: 40, OutputTokens: 12}, log.settles[0])
	assert.Equal(t, policy.Money(7), log.settles[1].Actual)
	assert.Equal(t, "released", log.settles[2].Outcome)
	assert.Zero(t, log.settles[2].Actual)
}

func stringsOf(recs []admission.DecisionRecord) string {
	var b strings.Builder
	for _, r := range recs {
		b.WriteString(r.Host + r.Path + r.Model + r.RequestedModel + r.Reason + strings.Join(r.Rules, ","))
	}
	return b.String()
}
