package admission_test

import (
	"bytes"
	"context"
	"fmt"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/fakeclock"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/memstore"
	"github.com/tollgate/tollgate/policy"
)

// trafficCall is one call of today's traffic.
type trafficCall struct {
	method, host, path, contentType string
	body                            []byte
	wantPool                        string // "": any
}

// fixtureCall maps a recorded body of testdata/bodies to the call that
// sends it.
func fixtureCall(t *testing.T, rel string, body []byte) trafficCall {
	t.Helper()
	name := filepath.Base(rel)
	c := trafficCall{method: http.MethodPost, contentType: "application/json", body: body}
	switch dir := filepath.Dir(rel); {
	case dir == "anthropic":
		c.host, c.path = "api.anthropic.com", "/v1/messages"
	case dir == "twilio":
		c.host, c.path, c.contentType = "api.twilio.com", "/2010-04-01/Accounts/AC123/Messages.json", "application/x-www-form-urlencoded"
	case dir == "sendgrid":
		c.host, c.path = "api.sendgrid.com", "/v3/mail/send"
	case strings.HasPrefix(name, "embeddings-"):
		c.host, c.path = "api.openai.com", "/v1/embeddings"
	case strings.HasPrefix(name, "responses-"):
		c.host, c.path = "api.openai.com", "/v1/responses"
	case strings.HasPrefix(name, "completions-"):
		c.host, c.path = "api.openai.com", "/v1/completions"
	default: // openai/chat-*, openai-chat-1k.json
		c.host, c.path = "api.openai.com", "/v1/chat/completions"
	}
	return c
}

// multipartBody is a multipart/form-data upload of size bytes in field
// "file", with the other fields given.
func multipartBody(t *testing.T, fields map[string]string, size int) (string, []byte) {
	t.Helper()
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	for k, v := range fields {
		require.NoError(t, w.WriteField(k, v))
	}
	f, err := w.CreateFormFile("file", "data.bin")
	require.NoError(t, err)
	_, err = f.Write(bytes.Repeat([]byte("{\"custom_id\":\"r\",\"method\":\"POST\"}\n"), size/35+1))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return w.FormDataContentType(), b.Bytes()
}

// embeddingsBatch is an embeddings call of about tokens input tokens.
func embeddingsBatch(tokens int) []byte {
	inputs := make([]string, 0, tokens/100)
	for range tokens / 100 {
		inputs = append(inputs, fmt.Sprintf("%q", strings.Repeat("alpha beta ", 50)))
	}
	return []byte(`{"model":"text-embedding-3-small","input":[` + strings.Join(inputs, ",") + `]}`)
}

// TestDefaultPolicyTodaysTraffic sends every recorded body of
// testdata/bodies, and a representative call of each non-chat endpoint,
// through admission under the bundled policy, each on fresh pools: none is
// refused, and none for ever (exceeds_capacity). The ones that used to be
// (a 15,300-token embeddings batch, a 135 KB file upload read as 34,797
// tokens of the GPT-4 pool) go to the pools they really consume.
func TestDefaultPolicyTodaysTraffic(t *testing.T) {
	calls := map[string]trafficCall{}
	root := filepath.Join("..", "testdata", "bodies")
	require.NoError(t, filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, path)
		require.NoError(t, err)
		body, err := os.ReadFile(path)
		require.NoError(t, err)
		calls["fixture "+rel] = fixtureCall(t, rel, body)
		return nil
	}))
	require.GreaterOrEqual(t, len(calls), 25, "the recorded bodies")

	uploadType, upload := multipartBody(t, map[string]string{"purpose": "batch"}, 135_000)
	audioType, audio := multipartBody(t, map[string]string{"model": "gpt-4o-transcribe"}, 200_000)
	openai := func(method, path, ct string, body []byte, pool string) trafficCall {
		return trafficCall{method: method, host: "api.openai.com", path: path, contentType: ct, body: body, wantPool: pool}
	}
	more := map[string]trafficCall{
		"embeddings batch of 15,300 tokens": openai("POST", "/v1/embeddings", "application/json", embeddingsBatch(15_300), "openai-embeddings"),
		"files upload of 135 KB":            openai("POST", "/v1/files", uploadType, upload, "openai-files"),
		"files list":                        openai("GET", "/v1/files", "", nil, "openai-files"),
		"audio transcription of 200 KB":     openai("POST", "/v1/audio/transcriptions", audioType, audio, "openai-audio"),
		"audio speech": openai("POST", "/v1/audio/speech", "application/json",
			[]byte(`{"model":"gpt-4o-mini-tts","input":"`+strings.Repeat("Hello there. ", 300)+`","voice":"alloy"}`), "openai-audio"),
		"image generation": openai("POST", "/v1/images/generations", "application/json",
			[]byte(`{"model":"gpt-image-1","prompt":"a lighthouse at dusk","size":"1024x1024","n":1}`), "openai-images"),
		"batch create": openai("POST", "/v1/batches", "application/json",
			[]byte(`{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h"}`), "openai-batches"),
		"moderation": openai("POST", "/v1/moderations", "application/json",
			[]byte(`{"model":"omni-moderation-latest","input":"`+strings.Repeat("some text ", 2000)+`"}`), "openai-moderations"),
		"gpt-4o with the largest max_tokens": openai("POST", "/v1/chat/completions", "application/json",
			[]byte(`{"model":"gpt-4o","max_tokens":16384,"messages":[{"role":"user","content":"Write a long story."}]}`), "gpt-4o"),
		"gpt-4 with a 16K allowance, fitted to its pool": openai("POST", "/v1/chat/completions", "application/json",
			[]byte(`{"model":"gpt-4","max_tokens":16384,"messages":[{"role":"user","content":"Hi"}]}`), "gpt-4"),
		"gpt-5 with a 128K allowance": openai("POST", "/v1/responses", "application/json",
			[]byte(`{"model":"gpt-5","max_output_tokens":128000,"input":"Plan the quarter."}`), "gpt-5"),
		"d1 query": {method: "POST", host: "api.cloudflare.com", path: "/client/v4/accounts/023e105f4ecef8ad9ca31a8372d0c353/d1/database/xxxx-db/query",
			contentType: "application/json", body: []byte(`{"sql":"SELECT * FROM users WHERE id = ?","params":["1"]}`), wantPool: "d1"},
		"kv read": {method: "GET", host: "api.cloudflare.com", path: "/client/v4/accounts/023e105f4ecef8ad9ca31a8372d0c353/storage/kv/namespaces/0f2ac74b/values/session:42",
			wantPool: "kv"},
	}
	for name, c := range more {
		calls[name] = c
	}

	for name, c := range calls {
		t.Run(name, func(t *testing.T) {
			clk := fakeclock.New(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
			store, err := memstore.New(memstore.Config{Clock: clk})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, store.Close()) })
			svc, err := admission.New(admission.Config{Settlement: admission.SettleDeferred}, admission.Deps{
				Policies: admission.StaticPolicy{Set: policy.Default()}, Store: store, Registerer: prometheus.NewRegistry(), Clock: clk})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, svc.Close()) })

			headers := map[string]string{}
			if c.contentType != "" {
				headers["content-type"] = c.contentType
			}
			v := svc.Decide(context.Background(), &admission.Request{ID: "t", Client: "traffic", Method: c.method, Host: c.host,
				Path: c.path, Headers: headers, Body: c.body, BodySize: int64(len(c.body))})
			require.NotEqual(t, string(limiter.ReasonExceedsCapacity), v.Reason, "refused for ever: %+v", v.Oversize)
			require.True(t, v.Allowed, "reason %s, pool %s", v.Reason, v.Pool)
			require.NotEmpty(t, v.Route, "every call of today's traffic is metered")
			if c.wantPool != "" {
				route := policy.Default().Route(v.Route)
				require.NotNil(t, route)
				assert.Equal(t, c.wantPool, route.Pools[0].Name, "route %s", v.Route)
			}
		})
	}
}
