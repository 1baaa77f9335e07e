package admission

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/policy"
)

func TestCacheControls(t *testing.T) {
	tests := map[string]struct {
		headers map[string]string
		want    cacheControls
	}{
		"none":                {nil, cacheControls{}},
		"no-cache":            {map[string]string{"cache-control": "no-cache"}, cacheControls{noLookup: true}},
		"no-store":            {map[string]string{"cache-control": "No-Store"}, cacheControls{skip: true}},
		"both, with spaces":   {map[string]string{"cache-control": " max-age=0 , no-cache,no-store "}, cacheControls{noLookup: true, skip: true}},
		"x-tollgate-cache":    {map[string]string{HeaderCache: " Skip "}, cacheControls{skip: true}},
		"another value":       {map[string]string{HeaderCache: "please"}, cacheControls{}},
		"no-cache=field form": {map[string]string{"cache-control": `no-cache="set-cookie"`}, cacheControls{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, controlsOf(tc.headers))
		})
	}
}

func TestReplayable(t *testing.T) {
	for name, want := range map[string]bool{
		"content-type": true, "openai-processing-ms": true, "openai-model": true, "x-custom": true,
		":status": false, "content-length": false, "transfer-encoding": false, "connection": false, "date": false,
		"set-cookie": false, "x-request-id": false, "request-id": false, "retry-after": false,
		"x-ratelimit-remaining-tokens": false, "anthropic-ratelimit-requests-limit": false,
		"x-tollgate-reservation": false, "x-envoy-upstream-service-time": false,
	} {
		assert.Equal(t, want, replayable(name), name)
	}
}

// TestRecordingKeeps: what each kind of entry keeps of an answer.
func TestRecordingKeeps(t *testing.T) {
	tests := map[string]struct {
		rec                     recording
		response, idempotencyOK string
	}{
		"a whole 200":     {recording{status: 200, complete: true}, "", ""},
		"a whole 201":     {recording{status: 201, complete: true}, "", ""},
		"a 400":           {recording{status: 400, complete: true}, "not_ok", ""},
		"a 409":           {recording{status: 409, complete: true}, "not_ok", "not_ok"},
		"a 429":           {recording{status: 429, complete: true}, "not_ok", "not_ok"},
		"a 500":           {recording{status: 500, complete: true}, "not_ok", "not_ok"},
		"a 408":           {recording{status: 408, complete: true}, "not_ok", "not_ok"},
		"cut short":       {recording{status: 200}, "incomplete", "incomplete"},
		"no response":     {recording{complete: true}, "incomplete", "incomplete"},
		"over the bound":  {recording{status: 200, complete: true, over: true}, "too_large", "too_large"},
		"a 1xx, somehow:": {recording{status: 103, complete: true}, "not_ok", "not_ok"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.response, tc.rec.keeps(respcache.Response))
			assert.Equal(t, tc.idempotencyOK, tc.rec.keeps(respcache.Idempotency))
		})
	}
	var none *recording
	assert.Equal(t, "incomplete", none.keeps(respcache.Response))
}

func TestRecordingBound(t *testing.T) {
	r := newRecording(200, map[string]string{"content-type": "application/json", "date": "x", "content-length": "9"}, 8)
	assert.Equal(t, map[string]string{"content-type": "application/json"}, r.headers)
	r.write([]byte("1234"))
	r.write(nil)
	r.write([]byte("5678"))
	assert.Equal(t, "12345678", string(r.body), "exactly the bound is kept")
	r.write([]byte("9"))
	assert.True(t, r.over)
	assert.Nil(t, r.body, "nothing held past the bound")
	r.write([]byte("more"))
	assert.Nil(t, r.body)
}

// TestIdempotencyKey: which calls are retries of which.
func TestIdempotencyKey(t *testing.T) {
	openai := &policy.Route{Name: "openai", Provider: policy.ProviderOpenAI}
	sms := &policy.Route{Name: "sms", Provider: policy.ProviderTwilio}
	rule := &policy.CacheRule{Idempotency: policy.Idempotency{Key: true, TTL: 24 * time.Hour, BodyWindow: 10 * time.Minute}}
	acme, beta := &policy.Client{ID: "acme"}, &policy.Client{ID: "beta"}
	id := func() costing.Identity { return costing.Identity{Hash: "h1"} }
	req := func(method string, hdrs map[string]string) *Request { return &Request{Method: method, Headers: hdrs} }
	key := map[string]string{HeaderIdempotencyKey: "k"}

	k1, ttl, ok := idempotencyKey(rule, openai, req("POST", key), acme, id, cacheControls{})
	assert.True(t, ok)
	assert.Equal(t, 24*time.Hour, ttl)
	assert.Equal(t, respcache.Idempotency, k1.Kind)
	assert.Equal(t, "acme", k1.Scope)
	assert.Len(t, k1.Hash, 64)

	k2, _, _ := idempotencyKey(rule, openai, req("POST", map[string]string{HeaderIdempotencyKey: " k "}), acme, id, cacheControls{})
	assert.Equal(t, k1, k2, "surrounding space is not the key")
	other, _, _ := idempotencyKey(rule, openai, req("POST", key), acme, func() costing.Identity { return costing.Identity{Hash: "h2"} }, cacheControls{})
	assert.NotEqual(t, k1.Hash, other.Hash, "the same key on another request is another call")
	theirs, _, _ := idempotencyKey(rule, openai, req("POST", key), beta, id, cacheControls{})
	assert.Equal(t, k1.Hash, theirs.Hash)
	assert.Equal(t, "beta", theirs.Scope, "kept apart by scope")

	_, _, ok = idempotencyKey(rule, openai, req("GET", key), acme, id, cacheControls{})
	assert.False(t, ok, "a GET is no retry of anything")
	_, _, ok = idempotencyKey(rule, openai, req("POST", nil), acme, id, cacheControls{})
	assert.False(t, ok, "no key, and no body window for an LLM route")
	noKeys := *rule
	noKeys.Idempotency.Key = false
	_, _, ok = idempotencyKey(&noKeys, openai, req("POST", key), acme, id, cacheControls{})
	assert.False(t, ok)

	body, ttl, ok := idempotencyKey(rule, sms, req("POST", nil), acme, id, cacheControls{})
	assert.True(t, ok, "the body window")
	assert.Equal(t, 10*time.Minute, ttl)
	assert.NotEqual(t, k1.Hash, body.Hash)
	_, _, ok = idempotencyKey(rule, sms, req("POST", nil), acme, id, cacheControls{skip: true})
	assert.False(t, ok, "x-tollgate-cache: skip sends the same message on purpose")
	_, ttl, ok = idempotencyKey(rule, sms, req("POST", key), acme, id, cacheControls{skip: true})
	assert.True(t, ok, "an explicit key is honoured all the same")
	assert.Equal(t, 24*time.Hour, ttl)
}

func TestScopeAndEntryHash(t *testing.T) {
	parent := &policy.Client{ID: "acme"}
	child := &policy.Client{ID: "acme/a", Parent: parent}
	shared := &policy.CacheRule{Scope: policy.ScopeParent}
	own := &policy.CacheRule{Scope: policy.ScopeClient}
	assert.Equal(t, "acme", scopeOf(shared, child))
	assert.Equal(t, "acme/a", scopeOf(own, child))
	assert.Equal(t, "acme", scopeOf(shared, parent), "no parent: its own")

	assert.Len(t, entryHash("r", "f"), 64)
	assert.NotEqual(t, entryHash("r", "f1"), entryHash("r", "f2"))
	assert.NotEqual(t, entryHash("r1", "f"), entryHash("r2", "f"))
}
