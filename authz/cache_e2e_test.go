package authz_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/envoysim"
	"github.com/tollgate/tollgate/internal/fakeapi"
	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/limiter/redisstore"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

// The response cache end to end: a worker's HTTP client → the Envoy
// stand-in (ext_authz and ext_proc as envoy/sidecar.yaml configures them)
// → the fake provider, which counts the calls that reach it, with Tollgate
// deciding and recording over real gRPC on loopback, under the policy of
// testdata/good/cache.yaml, on the system clock.

// e2eMember is one sidecar: a Tollgate server and its own stand-in's openai
// and twilio listeners.
type e2eMember struct {
	srv    *authz.Server
	openai string // base URL
	twilio string
}

// e2eFleet is one fake provider and the members in front of it.
type e2eFleet struct {
	fake    *fakeapi.Server
	members []*e2eMember
	client  *http.Client // the worker's
}

// e2eServe serves h on a loopback port until the test ends.
func e2eServe(t *testing.T, h http.Handler) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		assert.NoError(t, srv.Shutdown(ctx))
		assert.ErrorIs(t, <-done, http.ErrServerClosed)
	})
	return "http://" + lis.Addr().String()
}

// newE2EFleet starts the fake provider and one member per store (all
// sharing the fake; members given Redis stores share whatever the stores
// and caches share).
func newE2EFleet(t *testing.T, stores ...func(t *testing.T) (admission.Store, respcache.Cache)) *e2eFleet {
	t.Helper()
	f := &e2eFleet{fake: fakeapi.New(fakeapi.DefaultConfig())}
	tr := &http.Transport{MaxIdleConnsPerHost: 32}
	f.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	upstream := strings.TrimPrefix(e2eServe(t, f.fake), "http://")

	const policyFile = "../testdata/good/cache.yaml"
	fh, err := os.Open(policyFile)
	require.NoError(t, err)
	set, err := policy.Parse(policyFile, fh)
	require.NoError(t, errors.Join(err, fh.Close()))

	listeners, err := envoysim.Load("../envoy/sidecar.yaml")
	require.NoError(t, err)
	for _, name := range []string{"openai", "twilio"} {
		// The shipped ext_proc message timeout is 200 ms and fails open: on
		// a loaded test machine a response message answered late would be
		// passed on unrecorded, and its call led again (a second upstream
		// call the cache did not cause). The test keeps every other setting
		// and gives the message 5 s.
		listeners[name].Proc.MessageTimeout = durationpb.New(5 * time.Second)
	}

	for _, open := range stores {
		store, cache := open(t)
		cfg := authz.DefaultConfig()
		cfg.GRPCAddr, cfg.HTTPAddr, cfg.APIAddr, cfg.DrainDelay = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", 0
		cfg.APIToken = testToken
		cfg.Settlement = admission.SettleDeferred
		srv, err := authz.New(cfg, authz.Deps{Policies: admission.StaticPolicy{Set: set}, Store: store,
			Registry: prometheus.NewRegistry(), Cache: cache})
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- srv.Serve(context.Background()) }()
		conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			assert.NoError(t, srv.Shutdown(ctx))
			assert.NoError(t, recv(t, served), "Serve")
			assert.NoError(t, conn.Close())
		})
		m := &e2eMember{srv: srv}
		for name, base := range map[string]*string{"openai": &m.openai, "twilio": &m.twilio} {
			p, err := envoysim.New(envoysim.Config{Listener: listeners[name], Authz: authv3.NewAuthorizationClient(conn),
				Proc: extprocv3.NewExternalProcessorClient(conn), Upstream: upstream})
			require.NoError(t, err)
			t.Cleanup(p.Close)
			*base = e2eServe(t, p)
		}
		f.members = append(f.members, m)
	}
	return f
}

// e2eMemory is serve's default: the memory store and the in-process cache.
func e2eMemory(t *testing.T) (admission.Store, respcache.Cache) {
	t.Helper()
	s, err := memstore.New(memstore.DefaultConfig())
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	c, err := respcache.NewMemory(respcache.MemoryConfig{})
	require.NoError(t, err)
	return s, closing(t, c)
}

// e2eRedis is what serve builds for --store redis: the Redis store and the
// two-level cache (this process, then Redis), under prefix.
func e2eRedis(prefix string) func(t *testing.T) (admission.Store, respcache.Cache) {
	return func(t *testing.T) (admission.Store, respcache.Cache) {
		t.Helper()
		s, err := redisstore.New(redisSrv.Client(t), redisstore.Config{Prefix: prefix})
		require.NoError(t, err)
		mem, err := respcache.NewMemory(respcache.MemoryConfig{})
		require.NoError(t, err)
		cfg := respcache.DefaultRedisConfig()
		cfg.Prefix = prefix
		l2, err := respcache.NewRedis(redisSrv.Client(t), cfg)
		require.NoError(t, err)
		return s, closing(t, respcache.NewTiered(mem, l2))
	}
}

// workerAnswer is what the worker got.
type workerAnswer struct {
	status int
	header http.Header
	body   []byte
}

// post sends one call as acme's worker does.
func (f *e2eFleet) post(t *testing.T, rawURL, contentType, body string, hdrs ...string) workerAnswer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, rawURL, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("content-type", contentType)
	req.Header.Set("x-tollgate-client", "acme")
	req.Header.Set("authorization", "Bearer sk-worker")
	for i := 0; i+1 < len(hdrs); i += 2 {
		req.Header.Set(hdrs[i], hdrs[i+1])
	}
	resp, err := f.client.Do(req)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, errors.Join(err, resp.Body.Close()))
	return workerAnswer{status: resp.StatusCode, header: resp.Header, body: b}
}

func (m *e2eMember) chat(t *testing.T, f *e2eFleet, body string) workerAnswer {
	t.Helper()
	return f.post(t, m.openai+"/v1/chat/completions", "application/json", body)
}

// calls is how many calls reached the fake provider at this path.
func (f *e2eFleet) calls(path string) int { return f.fake.Calls().ByPath["POST "+path] }

const e2eChatPath = "/v1/chat/completions"

// settledSpend waits (bounded) until acme has nothing in flight on m (the
// response is settled a moment after the worker has it) and returns its
// spend.
func (m *e2eMember) settledSpend(t *testing.T) policy.Money {
	t.Helper()
	var rep admission.UsageReport
	require.Eventually(t, func() bool {
		r, err := m.srv.Service().Usage(context.Background(), "acme")
		require.NoError(t, err)
		rep = r
		return r.InFlight == 0
	}, 10*time.Second, 5*time.Millisecond, "acme still has calls in flight")
	return money(t, rep.Budgets[0].Spent)
}

// chatBody is a deterministic gpt-4o-mini chat call (temperature 0).
func e2eChatBody(prompt string, stream bool) string {
	extra := ""
	if stream {
		extra = `,"stream":true,"stream_options":{"include_usage":true}`
	}
	return `{"model":"gpt-4o-mini","temperature":0,"max_tokens":50` + extra +
		`,"messages":[{"role":"user","content":"` + prompt + `"}]}`
}

// concurrently sends n identical calls, call i through members[i%len],
// and returns what each worker got.
func (f *e2eFleet) concurrently(t *testing.T, n int, body string) []workerAnswer {
	t.Helper()
	out := make([]workerAnswer, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := f.members[i%len(f.members)]
			req, err := http.NewRequest(http.MethodPost, m.openai+e2eChatPath, strings.NewReader(body))
			if err != nil {
				errs[i] = err
				return
			}
			req.Header.Set("content-type", "application/json")
			req.Header.Set("x-tollgate-client", "acme")
			resp, err := f.client.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			b, err := io.ReadAll(resp.Body)
			errs[i] = errors.Join(err, resp.Body.Close())
			out[i] = workerAnswer{status: resp.StatusCode, header: resp.Header, body: b}
		}()
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	return out
}

// requireSameAnswers requires every answer 200, byte for byte the same,
// and says how each was answered.
func requireSameAnswers(t *testing.T, answers []workerAnswer) map[string]int {
	t.Helper()
	how := map[string]int{}
	for i, a := range answers {
		require.Equal(t, http.StatusOK, a.status, "call %d: %s", i, a.body)
		assert.Equal(t, string(answers[0].body), string(a.body), "call %d", i)
		how[a.header.Get(admission.HeaderCache)]++
	}
	return how
}

// TestCacheE2ERepeats: the second identical deterministic chat call, JSON
// or a stream, is answered without reaching the provider, byte for byte as
// the first reached its worker; ten identical calls at once reach it once.
func TestCacheE2ERepeats(t *testing.T) {
	for _, stream := range []bool{false, true} {
		name := map[bool]string{false: "json", true: "sse"}[stream]
		t.Run(name, func(t *testing.T) {
			f := newE2EFleet(t, e2eMemory)
			m := f.members[0]
			body := e2eChatBody("Summarize the quarterly report.", stream)
			first := m.chat(t, f, body)
			require.Equal(t, http.StatusOK, first.status, string(first.body))
			assert.Equal(t, "miss", first.header.Get(admission.HeaderCache))
			if stream {
				assert.Contains(t, first.header.Get("content-type"), "text/event-stream")
				assert.Contains(t, string(first.body), "data: [DONE]")
			}
			require.Equal(t, 1, f.calls(e2eChatPath))
			spent := m.settledSpend(t)
			require.Positive(t, spent)

			second := m.chat(t, f, body)
			require.Equal(t, http.StatusOK, second.status, string(second.body))
			assert.Equal(t, "hit", second.header.Get(admission.HeaderCache))
			assert.Equal(t, string(first.body), string(second.body), "byte for byte what the first call's worker got")
			assert.Equal(t, first.header.Get("content-type"), second.header.Get("content-type"))
			assert.Equal(t, 1, f.calls(e2eChatPath), "the repeat never reached the provider")
			assert.Equal(t, spent, m.settledSpend(t), "the repeat cost nothing")
		})
	}
	t.Run("ten at once", func(t *testing.T) {
		f := newE2EFleet(t, e2eMemory)
		how := requireSameAnswers(t, f.concurrently(t, 10, e2eChatBody("Ten at once.", false)))
		assert.Equal(t, 1, f.calls(e2eChatPath), "one call paid for: %v", how)
		assert.Equal(t, 1, how["miss"], "%v", how)
		t.Logf("answers: %v", how)
		f.members[0].settledSpend(t)
	})
}

// TestCacheE2EIdempotentSMS: an SMS retried with the same Idempotency-Key
// is sent once and billed once.
func TestCacheE2EIdempotentSMS(t *testing.T) {
	f := newE2EFleet(t, e2eMemory)
	m := f.members[0]
	const path = "/2010-04-01/Accounts/AC123/Messages.json"
	form := url.Values{"To": {"+15550001111"}, "From": {"+15550002222"}, "Body": {"Your code is 482913."}}.Encode()
	send := func() workerAnswer {
		return f.post(t, m.twilio+path, "application/x-www-form-urlencoded", form, "Idempotency-Key", "sms-7f3a")
	}
	first := send()
	require.Equal(t, http.StatusCreated, first.status, string(first.body))
	require.Equal(t, 1, f.calls(path))
	oneMessage := policy.Money(fakeapi.SegmentPrice * 1e9)
	require.Equal(t, oneMessage, m.settledSpend(t), "one message at Twilio's price")

	retry := send()
	require.Equal(t, http.StatusCreated, retry.status, string(retry.body))
	assert.Equal(t, "replayed", retry.header.Get(admission.HeaderCache))
	assert.Equal(t, string(first.body), string(retry.body), "the first send's answer")
	assert.Equal(t, 1, f.calls(path), "sent once")
	assert.Equal(t, oneMessage, m.settledSpend(t), "billed once")
}

// TestCacheE2EFleet: two members, each its own stand-in, on one
// redis-server with the Redis store and the two-level cache: a call
// answered through A is not paid for again through B, and ten identical
// calls split across A and B reach the provider once.
func TestCacheE2EFleet(t *testing.T) {
	newPair := func(t *testing.T) *e2eFleet {
		prefix := redistest.Prefix(t)
		return newE2EFleet(t, e2eRedis(prefix), e2eRedis(prefix))
	}
	t.Run("A then B", func(t *testing.T) {
		f := newPair(t)
		a, b := f.members[0], f.members[1]
		body := e2eChatBody("Which plan fits a team of five?", false)
		first := a.chat(t, f, body)
		require.Equal(t, http.StatusOK, first.status, string(first.body))
		assert.Equal(t, "miss", first.header.Get(admission.HeaderCache))
		spent := a.settledSpend(t)

		second := b.chat(t, f, body)
		require.Equal(t, http.StatusOK, second.status, string(second.body))
		assert.Equal(t, "hit", second.header.Get(admission.HeaderCache))
		assert.Equal(t, string(first.body), string(second.body))
		assert.Equal(t, 1, f.calls(e2eChatPath), "B answered from the entry A recorded")
		assert.Equal(t, spent, b.settledSpend(t), "one spend, seen by both members")
	})
	t.Run("ten at once across A and B", func(t *testing.T) {
		f := newPair(t)
		how := requireSameAnswers(t, f.concurrently(t, 10, e2eChatBody("Ten at once, two sidecars.", false)))
		assert.Equal(t, 1, f.calls(e2eChatPath), "one call paid for: %v", how)
		assert.Equal(t, 1, how["miss"], "%v", how)
		t.Logf("answers: %v", how)
		f.members[0].settledSpend(t)
	})
}
