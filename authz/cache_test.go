package authz_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

// cachePolicy: an OpenAI route and a Twilio route; acme and beta on their
// own scopes, acme/a and acme/b sharing their parent's; solo may have one
// call in flight.
const cachePolicy = `
defaults:
  unknown_client: deny
  reservation_ttl: 1m
pools:
  gpt: {unit: token, capacity: 100000, refill_per_second: 1000}
  sms: {unit: segment, capacity: 100, refill_per_second: 1, price: "0.0079"}
models:
  "gpt-4o*": {input: "2.50/1M", output: "10/1M", cached_input: "1.25/1M"}
routes:
  openai: {host: api.openai.com, path_prefix: /v1/, provider: openai, pools: [gpt]}
  twilio: {host: api.twilio.com, path_prefix: /2010-04-01/, provider: twilio, pools: [sms]}
tiers:
  team: {priority: 20, max_concurrent: 20, monthly_budget: "100"}
  shared: {priority: 20, max_concurrent: 20, monthly_budget: "100"}
  solo: {priority: 20, max_concurrent: 1, monthly_budget: "100"}
clients:
  acme: {tier: team}
  beta: {tier: team}
  solo: {tier: solo}
  acme/a: {tier: shared, parent: acme}
  acme/b: {tier: shared, parent: acme}
cache:
  rules:
    - name: shared
      when: {tiers: [shared]}
      scope: parent
    - name: llm
      when: {routes: [openai]}
      ttl: 1h
    - name: sms
      when: {routes: [twilio]}
      idempotency: {body_window: 10m}
`

// chatCost is what openai-chat.json's usage costs at gpt-4o's prices:
// 93 uncached and 1,024 cached input tokens, 46 output tokens.
const chatCost = 93*2500 + 1024*1250 + 46*10_000

// smsCost is one GSM-7 segment at the sms pool's price (Twilio's
// twilio-message-priced.json says the same).
const smsCost = 7_900_000

// cacheKind makes a test's store and cache on its clock.
type cacheKind = func(tb testing.TB, clk *fakeclock.Clock) (admission.Store, respcache.Cache)

// eachCache runs test on every cache kind.
func eachCache(t *testing.T, test func(t *testing.T, kind cacheKind)) {
	for name, kind := range cacheKinds {
		t.Run(name, func(t *testing.T) { test(t, kind) })
	}
}

// cacheKinds are the stores and caches the cache tests run on, as serve
// builds them: the memory store with the in-process cache, and the Redis
// store with the two-level cache (in process, then the same Redis under
// the test's own prefix).
var cacheKinds = map[string]cacheKind{
	"memory": func(tb testing.TB, clk *fakeclock.Clock) (admission.Store, respcache.Cache) {
		return storeKinds["memory"](tb, clk), closing(tb, newL1(tb, clk))
	},
	"redis": func(tb testing.TB, clk *fakeclock.Clock) (admission.Store, respcache.Cache) {
		prefix := redistest.Prefix(tb)
		s, err := redisstore.New(redisSrv.Client(tb), redisstore.Config{Prefix: prefix})
		require.NoError(tb, err)
		l2, err := respcache.NewRedis(redisSrv.Client(tb), respcache.RedisConfig{Prefix: prefix, Clock: clk})
		require.NoError(tb, err)
		return s, closing(tb, respcache.NewTiered(newL1(tb, clk), l2))
	},
}

func newL1(tb testing.TB, clk *fakeclock.Clock) *respcache.Memory {
	tb.Helper()
	c, err := respcache.NewMemory(respcache.MemoryConfig{Clock: clk})
	require.NoError(tb, err)
	return c
}

func closing(tb testing.TB, c respcache.Cache) respcache.Cache {
	tb.Cleanup(func() { assert.NoError(tb, c.Close()) })
	return c
}

// swappable is a policy source a test reloads.
type swappable struct{ p atomic.Pointer[policy.Set] }

func (s *swappable) Policy() *policy.Set { return s.p.Load() }

// startCached is startSettle with a response cache (and, given one, a
// policy source the test swaps).
func startCached(tb testing.TB, kind cacheKind, yaml string,
	policies admission.PolicySource) *settleServer {
	tb.Helper()
	clk := fakeclock.New(epoch)
	store, cache := kind(tb, clk)
	ts := startServer(tb, serverOpts{policy: yaml, policies: policies, clk: clk, store: store, cache: cache,
		config: func(c *authz.Config) { c.Settlement = admission.SettleDeferred }})
	conn, err := grpc.NewClient(ts.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(tb, err)
	tb.Cleanup(func() { assert.NoError(tb, conn.Close()) })
	return &settleServer{testServer: ts, proc: extprocv3.NewExternalProcessorClient(conn), clk: clk, store: store}
}

// detBody is a deterministic gpt-4o chat body (temperature 0); extra adds
// members.
func detBody(prompt, extra string) []byte {
	return fmt.Appendf(nil, `{"model":"gpt-4o","temperature":0,"max_tokens":300%s,"messages":[{"role":"user","content":%q}]}`, extra, prompt)
}

// smsBody is a one-segment Twilio message.
var smsBody = []byte("To=%2B14155550100&From=%2B14155550199&Body=Your+code+is+482913.")

// call is one request as Envoy's ext_authz sends it.
type call struct {
	client string
	body   []byte
	hdrs   map[string]string
	sms    bool // to Twilio, not OpenAI
}

func (c call) check() *authv3.CheckRequest {
	req := chatCheck(c.client, c.body)
	h := req.Attributes.Request.Http
	if c.sms {
		h.Path = "/2010-04-01/Accounts/AC1/Messages.json"
		h.Headers[":path"], h.Headers["content-type"] = h.Path, "application/x-www-form-urlencoded"
		req.Attributes.ContextExtensions[authz.ContextUpstreamHost] = "api.twilio.com"
	}
	for k, v := range c.hdrs {
		h.Headers[k] = v
	}
	return req
}

// answer is what Check answered: admitted (OK), or a local reply.
type answer struct {
	ok      bool
	admit   admitted
	status  int
	headers map[string]string
	body    []byte
}

func (ss *settleServer) ask(tb testing.TB, c call) answer {
	tb.Helper()
	resp, err := ss.auth.Check(context.Background(), c.check())
	require.NoError(tb, err)
	return readAnswer(tb, resp)
}

func readAnswer(tb testing.TB, resp *authv3.CheckResponse) answer {
	tb.Helper()
	a := answer{ok: resp.GetStatus().GetCode() == int32(code.Code_OK), headers: responseHeaders(tb, resp)}
	if a.ok {
		a.admit.worker = a.headers
		for _, h := range resp.GetOkResponse().GetHeaders() {
			switch h.GetHeader().GetKey() {
			case authz.HeaderReservation:
				a.admit.reservation = h.GetHeader().GetValue()
			case authz.HeaderRoute:
				a.admit.route = h.GetHeader().GetValue()
			}
		}
		require.NotEmpty(tb, a.admit.reservation)
		return a
	}
	d := resp.GetDeniedResponse()
	a.status, a.body = int(d.GetStatus().GetCode()), []byte(d.GetBody())
	return a
}

// requireCached requires a local reply from the cache: status, body and
// how.
func requireCached(tb testing.TB, a answer, how admission.CacheHow, status int, body []byte) {
	tb.Helper()
	require.False(tb, a.ok, "answered from the cache, not sent upstream")
	assert.Equal(tb, status, a.status)
	assert.Equal(tb, string(how), a.headers[admission.HeaderCache])
	assert.Equal(tb, string(body), string(a.body), "replayed byte for byte")
	assert.Contains(tb, a.headers, "age")
}

// requireMiss requires an admitted call the response cache recorded.
func requireMiss(tb testing.TB, a answer) {
	tb.Helper()
	require.True(tb, a.ok, "admitted: %d %s", a.status, a.body)
	assert.Equal(tb, "miss", a.admit.worker[admission.HeaderCache])
	assert.Len(tb, a.admit.worker[admission.HeaderCacheKey], 64)
}

// spentBy is a client's own spend this period.
func (ss *settleServer) spentBy(tb testing.TB, client string) policy.Money {
	tb.Helper()
	rep, err := ss.srv.Service().Usage(context.Background(), client)
	require.NoError(tb, err)
	return money(tb, rep.Budgets[0].Spent)
}

// savingsOf is a client's savings this period by strategy, once what
// answers from the cache saved is booked (the server's loop does it each
// second).
func (ss *settleServer) savingsOf(tb testing.TB, client string) map[string]policy.Money {
	tb.Helper()
	require.NoError(tb, ss.srv.Service().BookCacheSavings(context.Background()))
	return ss.bookedSavingsOf(tb, client)
}

// bookedSavingsOf is a client's savings as the store has them now.
func (ss *settleServer) bookedSavingsOf(tb testing.TB, client string) map[string]policy.Money {
	tb.Helper()
	rep, err := ss.srv.Service().Usage(context.Background(), client)
	require.NoError(tb, err)
	out := map[string]policy.Money{}
	for k, v := range rep.Savings {
		out[k] = money(tb, v)
	}
	return out
}

func (ss *settleServer) cacheAnswers(tb testing.TB, outcome, route string) float64 {
	tb.Helper()
	return metricValue(tb, ss.reg, "tollgate_cache_answers_total", map[string]string{"outcome": outcome, "route": route})
}

var okChat = func(tb testing.TB) upstream {
	return upstream{status: 200, headers: []string{"content-type", "application/json", "x-request-id", "req_upstream",
		"openai-processing-ms", "321", "x-ratelimit-remaining-tokens", "9000", "date", "Sun, 06 Dec 2026 07:00:00 GMT"},
		body: recorded(tb, "openai-chat.json")}
}

// TestCacheAnswersRepeats: the second identical deterministic call is
// answered at Check without going upstream, byte for byte as the first
// went to its worker (JSON and an event stream), for nothing, with the
// saving booked; over real gRPC, on both stores.
func TestCacheAnswersRepeats(t *testing.T) {
	for name, kind := range cacheKinds {
		t.Run(name, func(t *testing.T) {
			t.Run("json", func(t *testing.T) {
				ss := startCached(t, kind, cachePolicy, nil)
				body := detBody("Summarize the quarterly report.", "")
				first := ss.ask(t, call{client: "acme", body: body})
				requireMiss(t, first)
				ex := ss.process(t, first.admit, body, okChat(t))
				assert.Equal(t, string(okChat(t).body), string(ex.forwarded))
				require.Equal(t, policy.Money(chatCost), ss.spentBy(t, "acme"))

				second := ss.ask(t, call{client: "acme", body: body})
				requireCached(t, second, admission.CacheHit, 200, ex.forwarded)
				assert.Equal(t, "application/json", second.headers["content-type"])
				assert.Equal(t, "321", second.headers["openai-processing-ms"], "the provider's headers come back")
				assert.Equal(t, "req-1", second.headers["x-request-id"], "this call's id, not the upstream's of then")
				for _, h := range []string{"date", "x-ratelimit-remaining-tokens", "content-length", "x-tollgate-reservation"} {
					assert.NotContains(t, second.headers, h)
				}
				assert.Equal(t, first.admit.worker[admission.HeaderCacheKey], second.headers[admission.HeaderCacheKey])
				assert.Equal(t, "0", second.headers["age"])
				assert.Equal(t, policy.Money(chatCost), ss.spentBy(t, "acme"), "a hit costs nothing")
				assert.Equal(t, map[string]policy.Money{"cache": chatCost}, ss.savingsOf(t, "acme"))

				// The same question written differently, a minute on.
				ss.clk.Advance(time.Minute)
				reordered := []byte(`{"messages":[{"content":"Summarize the quarterly report.","role":"user"}], "max_tokens":300, "temperature":0, "model":"gpt-4o"}`)
				third := ss.ask(t, call{client: "acme", body: reordered})
				requireCached(t, third, admission.CacheHit, 200, ex.forwarded)
				assert.Equal(t, "60", third.headers["age"])
				assert.Equal(t, map[string]policy.Money{"cache": 2 * chatCost}, ss.savingsOf(t, "acme"))
				assert.Equal(t, 2.0, ss.cacheAnswers(t, "hit", "openai"))
				assert.Equal(t, 1.0, ss.cacheAnswers(t, "miss", "openai"))
				assert.Equal(t, 2.0, metricValue(t, ss.reg, "tollgate_authz_decisions_total",
					decisionLabels("gpt", "team", admission.OutcomeCached, admission.ReasonCacheHit)))
				assert.InDelta(t, 2*float64(chatCost)/1e9, metricValue(t, ss.reg, "tollgate_optimize_savings_dollars_total",
					map[string]string{"strategy": "cache", "tier": "team"}), 1e-12)

				// Past the rule's ttl (1h) the answer is gone.
				ss.clk.Advance(time.Hour)
				requireMiss(t, ss.ask(t, call{client: "acme", body: body}))
				requireLint(t, ss.reg)
			})
			t.Run("sse", func(t *testing.T) {
				ss := startCached(t, kind, cachePolicy, nil)
				body := detBody("Do you ship to Canada?", `,"stream":true`)
				first := ss.ask(t, call{client: "acme", body: body})
				requireMiss(t, first)
				stream := upstream{status: 200, headers: []string{"content-type", "text/event-stream; charset=utf-8"},
					body: recorded(t, "openai-chat-stream.sse"), chunk: 97}
				ex := ss.process(t, first.admit, body, stream)
				require.NotEmpty(t, ex.forwarded)
				spent := ss.spentBy(t, "acme")
				require.Positive(t, spent)

				second := ss.ask(t, call{client: "acme", body: body})
				requireCached(t, second, admission.CacheHit, 200, ex.forwarded)
				assert.Equal(t, "text/event-stream; charset=utf-8", second.headers["content-type"])
				assert.Equal(t, spent, ss.spentBy(t, "acme"))
				assert.Equal(t, map[string]policy.Money{"cache": spent}, ss.savingsOf(t, "acme"), "saved what the stream cost")
			})
		})
	}
}

// TestCacheLeavesAlone: what the response cache never answers or never
// keeps.
func TestCacheLeavesAlone(t *testing.T) {
	eachCache(t, func(t *testing.T, kind cacheKind) {
		body := detBody("What is our refund policy?", "")
		tests := map[string]struct {
			first, repeat call
			up            func(tb testing.TB) upstream
			// stored: a plain repeat afterwards is answered from the cache.
			stored bool
		}{
			"temperature 0.7": {
				first:  call{client: "acme", body: chatBodyAt(0.7)},
				repeat: call{client: "acme", body: chatBodyAt(0.7)},
				up:     okChat,
			},
			"no-store": {
				first:  call{client: "acme", body: body, hdrs: map[string]string{"cache-control": "no-store"}},
				repeat: call{client: "acme", body: body, hdrs: map[string]string{"cache-control": "no-store"}},
				up:     okChat,
			},
			"x-tollgate-cache: skip": {
				first:  call{client: "acme", body: body, hdrs: map[string]string{admission.HeaderCache: "skip"}},
				repeat: call{client: "acme", body: body, hdrs: map[string]string{admission.HeaderCache: "SKIP"}},
				up:     okChat,
			},
			"an upstream error": {
				first:  call{client: "acme", body: body},
				repeat: call{client: "acme", body: body},
				up: func(tb testing.TB) upstream {
					return upstream{status: 500, headers: []string{"content-type", "application/json"}, body: []byte(`{"error":{"message":"boom"}}`)}
				},
			},
			"a refusal": {
				first:  call{client: "acme", body: body},
				repeat: call{client: "acme", body: body},
				up: func(tb testing.TB) upstream {
					return upstream{status: 400, headers: []string{"content-type", "application/json"},
						body: []byte(`{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}`)}
				},
			},
		}
		for name, tc := range tests {
			t.Run(name, func(t *testing.T) {
				ss := startCached(t, kind, cachePolicy, nil)
				for _, c := range []call{tc.first, tc.repeat} {
					a := ss.ask(t, c)
					require.True(t, a.ok, "sent upstream: %d %s", a.status, a.body)
					ss.process(t, a.admit, c.body, tc.up(t))
				}
				plain := ss.ask(t, call{client: "acme", body: tc.first.body})
				require.True(t, plain.ok, "nothing was kept to answer it")
				assert.Empty(t, ss.savingsOf(t, "acme"))
			})
		}
	})
}

// chatBodyAt is a gpt-4o chat body at temperature t.
func chatBodyAt(t float64) []byte {
	return fmt.Appendf(nil, `{"model":"gpt-4o","temperature":%g,"max_tokens":300,"messages":[{"role":"user","content":"Write a haiku."}]}`, t)
}

// TestCacheNoCache: Cache-Control: no-cache skips the lookup and stores
// the fresh answer in place of the old.
func TestCacheNoCache(t *testing.T) {
	eachCache(t, func(t *testing.T, kind cacheKind) {
		ss := startCached(t, kind, cachePolicy, nil)
		body := detBody("Summarize.", "")
		first := ss.ask(t, call{client: "acme", body: body})
		requireMiss(t, first)
		ss.process(t, first.admit, body, okChat(t))

		fresh := ss.ask(t, call{client: "acme", body: body, hdrs: map[string]string{"cache-control": "no-cache"}})
		requireMiss(t, fresh)
		newer := upstream{status: 200, headers: []string{"content-type", "application/json"},
			body: []byte(`{"id":"chatcmpl-2","object":"chat.completion","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":0,"total_tokens":10}}`)}
		ss.process(t, fresh.admit, body, newer)

		requireCached(t, ss.ask(t, call{client: "acme", body: body}), admission.CacheHit, 200, newer.body)
	})
}

// TestCacheCutStream: a response cut short is not kept, and its flight
// ends at once: the next identical call leads instead of waiting.
func TestCacheCutStream(t *testing.T) {
	eachCache(t, func(t *testing.T, kind cacheKind) {
		ss := startCached(t, kind, cachePolicy, nil)
		body := detBody("Summarize.", `,"stream":true`)
		first := ss.ask(t, call{client: "acme", body: body})
		requireMiss(t, first)

		ctx, cancel := context.WithCancel(context.Background())
		st, err := ss.proc.Process(ctx)
		require.NoError(t, err)
		for _, r := range []*extprocv3.ProcessingRequest{
			{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMapOf(
				":method", "POST", authz.HeaderReservation, first.admit.reservation, authz.HeaderRoute, first.admit.route)}}},
			{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}},
			{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMapOf(
				":status", "200", "content-type", "text/event-stream")}}},
			{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: recorded(t, "openai-chat-stream.sse")[:200]}}},
		} {
			require.NoError(t, st.Send(r))
			_, err := st.Recv()
			require.NoError(t, err)
		}
		cancel() // the worker went away mid-stream
		require.Eventually(t, func() bool {
			return metricValue(t, ss.reg, "tollgate_cache_records_total", map[string]string{"result": "incomplete"}) == 1
		}, 10*time.Second, 5*time.Millisecond)

		// The flight was abandoned, not left to lapse: the next call leads
		// (respcache's conformance suite holds that an abandoned flight
		// leaves no claim to wait on).
		next := ss.ask(t, call{client: "acme", body: body})
		requireMiss(t, next)
	})
}

// TestCacheCoalesces: ten identical calls at once: one goes upstream, nine
// wait for it and get its answer; one call is paid for and nine saved.
func TestCacheCoalesces(t *testing.T) {
	for name, kind := range cacheKinds {
		t.Run(name, func(t *testing.T) {
			ss := startCached(t, kind, cachePolicy, nil)
			body := detBody("Classify this ticket: my parcel never arrived.", "")
			answers := make(chan *authv3.CheckResponse, 10)
			for range 10 {
				go func() {
					resp, err := ss.auth.Check(context.Background(), call{client: "acme", body: body}.check())
					assert.NoError(t, err)
					answers <- resp
				}()
			}
			lead := readAnswer(t, recv(t, answers))
			requireMiss(t, lead)
			require.Eventually(t, func() bool {
				return metricValue(t, ss.reg, "tollgate_cache_waiting_calls", nil) == 9
			}, 10*time.Second, time.Millisecond, "nine calls wait for the first")
			ex := ss.process(t, lead.admit, body, okChat(t))
			for range 9 {
				requireCached(t, readAnswer(t, recv(t, answers)), admission.CacheCoalesced, 200, ex.forwarded)
			}
			assert.Equal(t, policy.Money(chatCost), ss.spentBy(t, "acme"), "one call paid for")
			assert.Equal(t, map[string]policy.Money{"coalesce": 9 * chatCost}, ss.savingsOf(t, "acme"))
			assert.Equal(t, 9.0, ss.cacheAnswers(t, "coalesced", "openai"))
			assert.Equal(t, 0.0, metricValue(t, ss.reg, "tollgate_cache_waiting_calls", nil))
			assert.Zero(t, ss.srv.Service().Pending())
		})
	}
}

// TestCacheScopes: a client never gets another client's answer, unless the
// policy shares a scope (acme/a and acme/b share their parent's).
func TestCacheScopes(t *testing.T) {
	eachCache(t, func(t *testing.T, kind cacheKind) {
		ss := startCached(t, kind, cachePolicy, nil)
		body := detBody("What is 2+2?", "")
		first := ss.ask(t, call{client: "acme", body: body})
		requireMiss(t, first)
		ex := ss.process(t, first.admit, body, okChat(t))
		requireCached(t, ss.ask(t, call{client: "acme", body: body}), admission.CacheHit, 200, ex.forwarded)

		other := ss.ask(t, call{client: "beta", body: body})
		requireMiss(t, other)
		ss.process(t, other.admit, body, okChat(t))
		assert.Equal(t, policy.Money(chatCost), ss.spentBy(t, "beta"), "beta paid for its own")

		shared := ss.ask(t, call{client: "acme/a", body: body})
		requireMiss(t, shared) // not acme's own entry: another rule, another scope
		ex = ss.process(t, shared.admit, body, okChat(t))
		requireCached(t, ss.ask(t, call{client: "acme/b", body: body}), admission.CacheHit, 200, ex.forwarded)
		assert.Equal(t, map[string]policy.Money{"cache": chatCost}, ss.savingsOf(t, "acme/b"), "booked to the client answered")
		assert.Empty(t, ss.savingsOf(t, "acme/a"))

		// Idempotency keys are the client's own too.
		key := map[string]string{"idempotency-key": "k-1"}
		a := ss.ask(t, call{client: "acme", body: smsBody, sms: true, hdrs: key})
		require.True(t, a.ok)
		ss.process(t, a.admit, smsBody, smsSent(t))
		b := ss.ask(t, call{client: "beta", body: smsBody, sms: true, hdrs: key})
		require.True(t, b.ok, "beta's message with the same key is beta's own")
	})
}

func smsSent(tb testing.TB) upstream {
	return upstream{status: 201, headers: []string{"content-type", "application/json"}, body: recorded(tb, "twilio-message-priced.json")}
}

// TestCacheIdempotentSMS: an SDK's retry of a message that went out (same
// Idempotency-Key) is answered with the first answer: sent once, billed
// once; a retry while the first is in flight waits for it, or is refused
// 409 when its class cannot wait; a message repeated within the body
// window is its retry, one after it is a new message.
func TestCacheIdempotentSMS(t *testing.T) {
	for name, kind := range cacheKinds {
		t.Run(name, func(t *testing.T) {
			ss := startCached(t, kind, cachePolicy, nil)
			key := map[string]string{"idempotency-key": "0b6c2f1e-retry-me"}
			first := ss.ask(t, call{client: "acme", body: smsBody, sms: true, hdrs: key})
			require.True(t, first.ok)
			assert.Empty(t, first.admit.worker[admission.HeaderCache], "no response cache for SMS")

			// The SDK timed out and retries while the message is on its way.
			immediate := map[string]string{"idempotency-key": key["idempotency-key"], "x-tollgate-priority": "immediate"}
			busy := ss.ask(t, call{client: "acme", body: smsBody, sms: true, hdrs: immediate})
			require.False(t, busy.ok)
			assert.Equal(t, http.StatusConflict, busy.status)
			assert.Equal(t, admission.ReasonIdempotencyInFlight, busy.headers["x-tollgate-reason"])
			assert.JSONEq(t, `{"code":20403,"message":"A call with this Idempotency-Key (or, for a message, this same request) is still in flight; a retry after it ends gets its answer.","more_info":"https://www.twilio.com/docs/errors/20403","status":409}`, string(busy.body))

			waiting := make(chan *authv3.CheckResponse, 1)
			go func() {
				resp, err := ss.auth.Check(context.Background(), call{client: "acme", body: smsBody, sms: true, hdrs: key}.check())
				assert.NoError(t, err)
				waiting <- resp
			}()
			require.Eventually(t, func() bool { return metricValue(t, ss.reg, "tollgate_cache_waiting_calls", nil) == 1 },
				10*time.Second, time.Millisecond)
			ex := ss.process(t, first.admit, smsBody, smsSent(t))
			requireCached(t, readAnswer(t, recv(t, waiting)), admission.CacheReplayed, 201, ex.forwarded)

			// Later retries, too.
			retry := ss.ask(t, call{client: "acme", body: smsBody, sms: true, hdrs: key})
			requireCached(t, retry, admission.CacheReplayed, 201, ex.forwarded)
			assert.NotContains(t, retry.headers, admission.HeaderCacheKey, "an idempotency record is not the response cache's")
			assert.Equal(t, policy.Money(smsCost), ss.spentBy(t, "acme"), "billed once")
			assert.Equal(t, map[string]policy.Money{"idempotency": 2 * smsCost}, ss.savingsOf(t, "acme"))
			assert.Equal(t, 2.0, ss.cacheAnswers(t, "replayed", "twilio"))

			// Another key is another message.
			other := ss.ask(t, call{client: "acme", body: smsBody, sms: true, hdrs: map[string]string{"idempotency-key": "another"}})
			require.True(t, other.ok)
			ss.process(t, other.admit, smsBody, smsSent(t))
			assert.Equal(t, policy.Money(2*smsCost), ss.spentBy(t, "acme"))
		})
	}
}

// TestCacheBodyWindow: without a key, the same message within the rule's
// body window is a retry; after it, a new message.
func TestCacheBodyWindow(t *testing.T) {
	eachCache(t, func(t *testing.T, kind cacheKind) {
		ss := startCached(t, kind, cachePolicy, nil)
		first := ss.ask(t, call{client: "acme", body: smsBody, sms: true})
		require.True(t, first.ok)
		ex := ss.process(t, first.admit, smsBody, smsSent(t))
		ss.clk.Advance(9 * time.Minute)
		requireCached(t, ss.ask(t, call{client: "acme", body: smsBody, sms: true}), admission.CacheReplayed, 201, ex.forwarded)
		skip := ss.ask(t, call{client: "acme", body: smsBody, sms: true, hdrs: map[string]string{admission.HeaderCache: "skip"}})
		require.True(t, skip.ok, "x-tollgate-cache: skip sends the same message again on purpose")
		ss.process(t, skip.admit, smsBody, smsSent(t))
		ss.clk.Advance(2 * time.Minute)
		again := ss.ask(t, call{client: "acme", body: smsBody, sms: true})
		require.True(t, again.ok, "past the 10 minute window: a new message")
		ss.process(t, again.admit, smsBody, smsSent(t))
		assert.Equal(t, policy.Money(3*smsCost), ss.spentBy(t, "acme"))
	})
}

// TestCacheIdempotencyStatuses: an idempotency record keeps a final
// answer (a 400: the retry would fail the same), never one the SDK retries
// (429, 5xx), whose retry must reach the provider.
func TestCacheIdempotencyStatuses(t *testing.T) {
	eachCache(t, func(t *testing.T, kind cacheKind) {
		for status, replayed := range map[int]bool{400: true, 429: false, 503: false} {
			t.Run(strconv.Itoa(status), func(t *testing.T) {
				ss := startCached(t, kind, cachePolicy, nil)
				key := map[string]string{"idempotency-key": "k"}
				up := upstream{status: status, headers: []string{"content-type", "application/json"}, body: []byte(`{"code":21211,"message":"no"}`)}
				first := ss.ask(t, call{client: "acme", body: smsBody, sms: true, hdrs: key})
				require.True(t, first.ok)
				ss.process(t, first.admit, smsBody, up)
				// A 429 pauses the pool (a second here): on the memory store
				// by the test's clock, on Redis by Redis's own. The retry
				// asks, without waiting in the queue, until it is past it.
				ss.clk.Advance(2 * time.Second)
				immediate := call{client: "acme", body: smsBody, sms: true, hdrs: map[string]string{"idempotency-key": "k", "x-tollgate-priority": "immediate"}}
				var resp *authv3.CheckResponse
				require.Eventually(t, func() bool {
					r, err := ss.auth.Check(context.Background(), immediate.check())
					resp = r
					return err == nil && responseHeaders(t, r)["x-tollgate-reason"] != "rate_limited"
				}, 10*time.Second, 10*time.Millisecond)
				retry := readAnswer(t, resp)
				if replayed {
					requireCached(t, retry, admission.CacheReplayed, status, up.body)
					assert.Empty(t, ss.savingsOf(t, "acme"), "a refused message cost nothing, so saved nothing")
					return
				}
				require.True(t, retry.ok, "the retry goes to the provider")
			})
		}
	})
}

// TestCacheDenialAfterLead: a call that led a flight and is then refused
// (here: its client's one slot is taken) releases the flight at once: the
// next identical call leads, and its answer is kept.
func TestCacheDenialAfterLead(t *testing.T) {
	eachCache(t, func(t *testing.T, kind cacheKind) {
		ss := startCached(t, kind, cachePolicy, nil)
		immediate := map[string]string{"x-tollgate-priority": "immediate"}
		busy := ss.ask(t, call{client: "solo", body: chatBodyAt(0.9)}) // holds solo's one slot
		require.True(t, busy.ok)

		body := detBody("Translate to French: thank you.", "")
		refused := ss.ask(t, call{client: "solo", body: body, hdrs: immediate})
		require.False(t, refused.ok)
		assert.Equal(t, 429, refused.status)
		assert.Equal(t, "concurrency", refused.headers["x-tollgate-reason"])
		assert.Equal(t, 1.0, metricValue(t, ss.reg, "tollgate_cache_records_total", map[string]string{"result": "denied"}))
		ss.process(t, busy.admit, chatBodyAt(0.9), okChat(t))

		// Had the refused call kept its flight, this one (which cannot wait)
		// would go upstream uncached, and the next would not be a hit.
		next := ss.ask(t, call{client: "solo", body: body, hdrs: immediate})
		requireMiss(t, next)
		ex := ss.process(t, next.admit, body, okChat(t))
		requireCached(t, ss.ask(t, call{client: "solo", body: body, hdrs: immediate}), admission.CacheHit, 200, ex.forwarded)
	})
}

// TestCacheInvalidate: DELETE /api/cache/{client}[?route=] and
// DELETE /api/cache/{client}/{route}/{hash} forget what was kept.
func TestCacheInvalidate(t *testing.T) {
	eachCache(t, func(t *testing.T, kind cacheKind) {
		ss := startCached(t, kind, cachePolicy, nil)
		body := detBody("Summarize.", "")
		keep := func() string {
			a := ss.ask(t, call{client: "acme", body: body})
			requireMiss(t, a)
			ss.process(t, a.admit, body, okChat(t))
			require.False(t, ss.ask(t, call{client: "acme", body: body}).ok, "kept")
			return a.admit.worker[admission.HeaderCacheKey]
		}
		del := func(path string) (int, string) {
			req, err := http.NewRequest(http.MethodDelete, ss.base+path, nil)
			require.NoError(t, err)
			resp, err := ss.http.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			return resp.StatusCode, string(b)
		}

		keep()
		sc, out := del("/api/cache/beta")
		assert.Equal(t, http.StatusOK, sc)
		assert.JSONEq(t, `{"scope":"beta","dropped":0}`, out)
		sc, out = del("/api/cache/acme?route=openai")
		assert.Equal(t, http.StatusOK, sc)
		assert.JSONEq(t, `{"scope":"acme","route":"openai","dropped":1}`, out)

		hash := keep()
		sc, out = del("/api/cache/acme/openai/" + hash)
		assert.Equal(t, http.StatusOK, sc, out)
		sc, _ = del("/api/cache/acme/openai/" + hash)
		assert.Equal(t, http.StatusNotFound, sc, "gone already")
		sc, _ = del("/api/cache/acme/openai/not-a-hash")
		assert.Equal(t, http.StatusBadRequest, sc)
		requireMiss(t, ss.ask(t, call{client: "acme", body: body}))

		unauth, err := http.NewRequest(http.MethodDelete, ss.base+"/api/cache/acme", nil)
		require.NoError(t, err)
		unauth.Header.Set("Authorization", "Bearer wrong-token-0123456789")
		resp, err := ss.http.Do(unauth)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)

		// Without a cache there is nothing to drop.
		bare := startSettle(t, storeKinds["memory"], cachePolicy)
		req, err := http.NewRequest(http.MethodDelete, bare.base+"/api/cache/acme", nil)
		require.NoError(t, err)
		resp, err = bare.http.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	})
}

// TestCacheReload: a reload that changes a route's cache settings leaves
// its old entries unreachable (the settings are part of the key); going
// back to the old settings finds them again.
func TestCacheReload(t *testing.T) {
	eachCache(t, func(t *testing.T, kind cacheKind) {
		src := &swappable{}
		old := compilePolicy(t, cachePolicy)
		src.p.Store(old)
		ss := startCached(t, kind, "", src)
		body := detBody("Summarize.", "")
		a := ss.ask(t, call{client: "acme", body: body})
		requireMiss(t, a)
		ex := ss.process(t, a.admit, body, okChat(t))
		requireCached(t, ss.ask(t, call{client: "acme", body: body}), admission.CacheHit, 200, ex.forwarded)

		src.p.Store(compilePolicy(t, replaceOnce(t, cachePolicy, "      ttl: 1h", "      ttl: 2h")))
		b := ss.ask(t, call{client: "acme", body: body})
		requireMiss(t, b)
		assert.NotEqual(t, a.admit.worker[admission.HeaderCacheKey], b.admit.worker[admission.HeaderCacheKey])
		ss.process(t, b.admit, body, okChat(t))

		src.p.Store(old)
		requireCached(t, ss.ask(t, call{client: "acme", body: body}), admission.CacheHit, 200, ex.forwarded)
	})
}

func replaceOnce(tb testing.TB, s, old, new string) string {
	tb.Helper()
	require.Contains(tb, s, old)
	return strings.Replace(s, old, new, 1)
}

// unbooking is a store whose Book fails while down is set, as a Redis
// away would; safe for concurrent use.
type unbooking struct {
	admission.Store
	down atomic.Bool
}

func (s *unbooking) Book(ctx context.Context, batch string, deltas []limiter.SpendDelta) (bool, error) {
	if s.down.Load() {
		return false, errStoreDown
	}
	return s.Store.Book(ctx, batch, deltas)
}

// TestCacheSavingsBookedOnce: a hit's saving is booked with the next
// batch; one the store could not take is sent again, as it was, and booked
// exactly once.
func TestCacheSavingsBookedOnce(t *testing.T) {
	eachCache(t, func(t *testing.T, kind cacheKind) {
		var store *unbooking
		ss := startCached(t, func(tb testing.TB, clk *fakeclock.Clock) (admission.Store, respcache.Cache) {
			s, c := kind(tb, clk)
			store = &unbooking{Store: s}
			return store, c
		}, cachePolicy, nil)
		body := detBody("Summarize.", "")
		first := ss.ask(t, call{client: "acme", body: body})
		requireMiss(t, first)
		ex := ss.process(t, first.admit, body, okChat(t))

		store.down.Store(true)
		requireCached(t, ss.ask(t, call{client: "acme", body: body}), admission.CacheHit, 200, ex.forwarded)
		assert.Empty(t, ss.bookedSavingsOf(t, "acme"), "not booked yet")
		assert.True(t, ss.srv.Service().CacheSavingsUnbooked())
		require.Error(t, ss.srv.Service().BookFailOpen(context.Background()))

		store.down.Store(false)
		require.NoError(t, ss.srv.Service().BookFailOpen(context.Background()))
		require.NoError(t, ss.srv.Service().BookFailOpen(context.Background()))
		assert.False(t, ss.srv.Service().CacheSavingsUnbooked())
		assert.Equal(t, map[string]policy.Money{"cache": chatCost}, ss.bookedSavingsOf(t, "acme"), "booked once")
		assert.InDelta(t, float64(chatCost)/1e9, metricValue(t, ss.reg, "tollgate_optimize_savings_dollars_total",
			map[string]string{"strategy": "cache", "tier": "team"}), 1e-12)
	})
}
