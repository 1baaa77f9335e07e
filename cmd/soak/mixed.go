package main

// The ordinary traffic of a busy sidecar: whole calls through the Envoy
// stand-in to the fake provider (JSON and streamed, compressed, refused by
// the provider), calls held in the queue and calls given up while held,
// streams abandoned halfway, a client at its concurrency limit, a client
// out of money, and calls that services settle through the JSON API or
// never settle at all.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tollgate/tollgate/authz"
	"github.com/tollgate/tollgate/internal/fakeapi"
)

// Headers a worker sets.
const (
	clientHeader   = "x-tollgate-client"
	priorityHeader = "x-tollgate-priority"
	reasonHeader   = "x-tollgate-reason"
)

// busy are the refusals an ordinary call may get when its pool, queue or
// slots are busy: expected under load, never a fault.
var busy = []string{"429 rate_limited", "429 concurrency", "429 queue_timeout", "429 queue_full"}

// mixedKinds are the ordinary calls, at their rates (a second, before
// --scale).
func mixedKinds() []kind {
	return []kind{
		{"openai_json", 20, 16, openAIJSON(false)},
		{"openai_json_gzip", 3, 8, openAIJSON(true)},
		{"openai_stream", 10, 16, openAIStream(false)},
		{"openai_stream_usage", 3, 8, openAIStream(true)},
		{"anthropic_json", 6, 8, anthropicCall(false)},
		{"anthropic_stream", 6, 8, anthropicCall(true)},
		{"openai_embeddings", 3, 8, embeddings},
		{"twilio_sms", 3, 8, twilioSMS},
		{"sendgrid_mail", 3, 8, sendgridMail},
		{"upstream_429", 1, 8, upstream429},
		{"queued", 2.5, 40, queued},
		{"cancel_while_held", 0.5, 8, cancelHeld},
		{"abandoned_stream", 1, 8, abandonedStream},
		{"concurrency_limit", 0.5, 4, concurrencyLimit},
		{"over_budget", 1, 4, overBudget},
		{"api_settle", 3, 8, apiSettle},
		{"never_settled", 0.2, 2, neverSettled},
	}
}

// soakClients are the policy's clients the soak's calls use; the drain
// check asks each of them for what is left in flight.
var soakClients = []string{"soak-0", "soak-1", "soak-2", "soak-3", "soak-4", "soak-5", "soak-6", "soak-7", "soak-tight", "soak-broke"}

// client spreads ordinary calls over the eight standard clients.
func client(n int64) string { return soakClients[n%8] }

// memberOf spreads calls over a fleet's members.
func (r *rig) memberOf(n int64) int { return int(n % int64(len(r.members))) }

// call sends a worker's request through the stand-in's listener in front
// of call n's member.
func (r *rig) call(ctx context.Context, n int64, listener, path, contentType string, body []byte, hdr map[string]string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.proxies[r.memberOf(n)][listener]+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("content-type", contentType)
	req.Header.Set("authorization", "Bearer sk-soak") // withheld from Tollgate by the config
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return r.web.Do(req)
}

// outcomeOf names an answer: its status, and Tollgate's reason when
// Tollgate refused it.
func outcomeOf(resp *http.Response) string {
	if reason := resp.Header.Get(reasonHeader); reason != "" {
		return fmt.Sprintf("%d %s", resp.StatusCode, reason)
	}
	return fmt.Sprint(resp.StatusCode)
}

// expect returns an error unless outcome is one of want.
func expect(outcome string, want ...string) error {
	if slices.Contains(want, outcome) {
		return nil
	}
	return fmt.Errorf("%s, want one of %s", outcome, strings.Join(want, ", "))
}

// finish reads an answer to the end and classifies it: ok says it
// succeeded with status, which check then holds to what the call should
// have got; a refusal must be one of the busy ones.
func finish(resp *http.Response, err error, status int, check func([]byte, http.Header) error) (string, error) {
	if err != nil {
		return "transport error", err
	}
	defer resp.Body.Close()
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	out := outcomeOf(resp)
	if resp.StatusCode != status {
		if e := expect(out, busy...); e != nil {
			return out, fmt.Errorf("%w: %.200s", e, body)
		}
		return out, nil
	}
	if rerr != nil {
		return out + " cut", rerr
	}
	if resp.Header.Get(authz.HeaderQueueWait) != "" {
		out += " after a hold"
	}
	if check != nil {
		if err := check(body, resp.Header); err != nil {
			return out + " wrong body", err
		}
	}
	return out, nil
}

// reply is what the fake provider answers a call allowed maxTokens.
func reply(maxTokens int) string {
	return strings.Join(fakeapi.Reply[:min(maxTokens, len(fakeapi.Reply))], "")
}

func chatBody(model string, maxTokens int, stream, includeUsage bool) []byte {
	b := map[string]any{"model": model, "max_tokens": maxTokens, "stream": stream,
		"messages": []map[string]string{{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}}}
	if includeUsage {
		b["stream_options"] = map[string]bool{"include_usage": true}
	}
	out, _ := json.Marshal(b)
	return out
}

func openAIJSON(gzipped bool) func(context.Context, *rig, int64) (string, error) {
	return func(ctx context.Context, r *rig, n int64) (string, error) {
		mt := 1 + int(n*37%300)
		hdr := map[string]string{clientHeader: client(n)}
		if gzipped {
			hdr[fakeapi.ScenarioHeader], hdr["accept-encoding"] = fakeapi.ScenarioGzip, "gzip"
		}
		resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-nano", mt, false, false), hdr)
		return finish(resp, err, http.StatusOK, func(b []byte, h http.Header) error {
			if h.Get("content-encoding") == "gzip" {
				zr, err := gzip.NewReader(bytes.NewReader(b))
				if err != nil {
					return err
				}
				if b, err = io.ReadAll(zr); err != nil {
					return err
				}
			}
			var c struct {
				Choices []struct{ Message struct{ Content string } }
			}
			if err := json.Unmarshal(b, &c); err != nil || len(c.Choices) != 1 || c.Choices[0].Message.Content != reply(mt) {
				return fmt.Errorf("chat answer %.200q (%v), want the reply %q", b, err, reply(mt))
			}
			return nil
		})
	}
}

// sseText joins the text of an OpenAI stream's chunks, and says whether
// it ended with [DONE].
func sseText(b []byte) (string, bool) {
	var text strings.Builder
	done := false
	for line := range strings.Lines(string(b)) {
		data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var ch struct {
			Choices []struct{ Delta struct{ Content string } }
		}
		if json.Unmarshal([]byte(data), &ch) == nil && len(ch.Choices) > 0 {
			text.WriteString(ch.Choices[0].Delta.Content)
		}
	}
	return text.String(), done
}

func openAIStream(includeUsage bool) func(context.Context, *rig, int64) (string, error) {
	return func(ctx context.Context, r *rig, n int64) (string, error) {
		hdr := map[string]string{clientHeader: client(n)}
		if n%2 == 0 {
			hdr[fakeapi.ScenarioHeader] = fakeapi.ScenarioSlow
		}
		resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-nano", 100, true, includeUsage), hdr)
		return finish(resp, err, http.StatusOK, func(b []byte, _ http.Header) error {
			if text, done := sseText(b); text != reply(100) || !done {
				return fmt.Errorf("stream text %q, [DONE] %v; want %q", text, done, reply(100))
			}
			return nil
		})
	}
}

func anthropicCall(stream bool) func(context.Context, *rig, int64) (string, error) {
	return func(ctx context.Context, r *rig, n int64) (string, error) {
		body, _ := json.Marshal(map[string]any{"model": "claude-haiku-4-5", "max_tokens": 100, "system": "Be brief.", "stream": stream,
			"messages": []map[string]string{{"role": "user", "content": "Say hello."}}})
		hdr := map[string]string{clientHeader: client(n)}
		if n%3 == 0 {
			hdr[fakeapi.ScenarioHeader] = fakeapi.ScenarioCached
		}
		resp, err := r.call(ctx, n, "anthropic", "/v1/messages", "application/json", body, hdr)
		return finish(resp, err, http.StatusOK, func(b []byte, _ http.Header) error {
			if !stream {
				var m struct{ Content []struct{ Text string } }
				if err := json.Unmarshal(b, &m); err != nil || len(m.Content) != 1 || m.Content[0].Text != reply(100) {
					return fmt.Errorf("message %.200q (%v), want the reply", b, err)
				}
				return nil
			}
			var text strings.Builder
			for line := range strings.Lines(string(b)) {
				var ev struct{ Delta struct{ Text string } }
				if data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: "); ok && json.Unmarshal([]byte(data), &ev) == nil {
					text.WriteString(ev.Delta.Text)
				}
			}
			if text.String() != reply(100) || !strings.Contains(string(b), "message_stop") {
				return fmt.Errorf("stream text %q, want %q and message_stop", text.String(), reply(100))
			}
			return nil
		})
	}
}

func embeddings(ctx context.Context, r *rig, n int64) (string, error) {
	body := []byte(`{"model":"text-embedding-3-small","input":["soak one","soak two"]}`)
	resp, err := r.call(ctx, n, "openai", "/v1/embeddings", "application/json", body, map[string]string{clientHeader: client(n)})
	return finish(resp, err, http.StatusOK, nil)
}

func twilioSMS(ctx context.Context, r *rig, n int64) (string, error) {
	text := strings.Repeat("Soak ", 1+int(n%70)) // one to three segments
	form := url.Values{"To": {"+15558675310"}, "From": {"+15017122661"}, "Body": {text}}
	resp, err := r.call(ctx, n, "twilio", "/2010-04-01/Accounts/ACsoak/Messages.json", "application/x-www-form-urlencoded",
		[]byte(form.Encode()), map[string]string{clientHeader: client(n)})
	return finish(resp, err, http.StatusCreated, nil)
}

func sendgridMail(ctx context.Context, r *rig, n int64) (string, error) {
	body := []byte(`{"personalizations":[{"to":[{"email":"a@example.com"},{"email":"b@example.com"}]}],"from":{"email":"soak@example.com"},"subject":"soak","content":[{"type":"text/plain","value":"soak"}]}`)
	resp, err := r.call(ctx, n, "sendgrid", "/v3/mail/send", "application/json", body, map[string]string{clientHeader: client(n)})
	return finish(resp, err, http.StatusAccepted, nil)
}

// upstream429: the provider refuses with its own 429 and Retry-After;
// Tollgate passes it on, pauses the pool for as long, and holds or
// refuses the calls that follow meanwhile.
func upstream429(ctx context.Context, r *rig, n int64) (string, error) {
	resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-mini", 50, false, false),
		map[string]string{clientHeader: client(n), fakeapi.ScenarioHeader: fakeapi.Scenario429})
	if err != nil {
		return "transport error", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	out := outcomeOf(resp)
	return out, expect(out, append([]string{"429"}, busy...)...)
}

// classes rotate over the queued calls: all but immediate may wait.
var classes = []string{"fast", "normal", "batch", "immediate"}

// queued calls share a pool of two calls a second, offered more: they
// wait in the hold queue, are let go in turn, or time out.
func queued(ctx context.Context, r *rig, n int64) (string, error) {
	resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-narrow", 20, false, false),
		map[string]string{clientHeader: client(n), priorityHeader: classes[n%int64(len(classes))]})
	return finish(resp, err, http.StatusOK, nil)
}

// cancelHeld gives up on a batch call after 300 ms, most often while it
// is held: it must leave the queue and give back what it held.
func cancelHeld(ctx context.Context, r *rig, n int64) (string, error) {
	// Fill the narrow pool first, so that the call that follows is held.
	for range 2 {
		if resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-narrow", 20, false, false),
			map[string]string{clientHeader: client(n), priorityHeader: "immediate"}); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	resp, err := r.call(cctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-narrow", 20, false, false),
		map[string]string{clientHeader: client(n), priorityHeader: "batch"})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return "given up while held", nil
		}
		return "transport error", err
	}
	out, err := finish(resp, nil, http.StatusOK, nil)
	if err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		// Let go just before the 300 ms were up: the soak's own deadline
		// cut the answer it was reading.
		return "given up as it was let go", nil
	}
	return out, err
}

// abandonedStream reads the first event of a slow stream and hangs up:
// the stand-in cancels the ext_proc stream, which settles the call.
func abandonedStream(ctx context.Context, r *rig, n int64) (string, error) {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := r.call(cctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-nano", 100, true, false),
		map[string]string{clientHeader: client(n), fakeapi.ScenarioHeader: fakeapi.ScenarioSlow})
	if err != nil {
		return "transport error", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return finish(resp, nil, http.StatusOK, nil)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: ") {
		return "no first event", fmt.Errorf("first line %q: %v", line, err)
	}
	cancel()
	return "abandoned after the first event", nil
}

// concurrencyLimit sends three slow streams at once for a client with two
// slots, as immediate calls: at least one is refused for concurrency
// unless one ended before the last began.
func concurrencyLimit(ctx context.Context, r *rig, n int64) (string, error) {
	var mu sync.Mutex
	outs := map[string]int{}
	var errs []error
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			resp, err := r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-nano", 100, true, false),
				map[string]string{clientHeader: "soak-tight", priorityHeader: "immediate", fakeapi.ScenarioHeader: fakeapi.ScenarioSlow})
			out, err := finish(resp, err, http.StatusOK, nil)
			mu.Lock()
			defer mu.Unlock()
			outs[out]++
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	parts := make([]string, 0, len(outs))
	for _, k := range slices.Sorted(maps.Keys(outs)) {
		parts = append(parts, fmt.Sprintf("%s×%d", k, outs[k]))
	}
	return strings.Join(parts, " + "), errors.Join(errs...)
}

// overBudget: a client whose budget is below any call's estimate is
// refused as each provider refuses a client out of money, every time.
func overBudget(ctx context.Context, r *rig, n int64) (string, error) {
	hdr := map[string]string{clientHeader: "soak-broke"}
	var resp *http.Response
	var err error
	want := "429 budget_exceeded" // OpenAI's insufficient_quota
	if n%2 == 0 {
		resp, err = r.call(ctx, n, "openai", "/v1/chat/completions", "application/json", chatBody("gpt-4.1-nano", 100, false, false), hdr)
	} else {
		body, _ := json.Marshal(map[string]any{"model": "claude-haiku-4-5", "max_tokens": 100,
			"messages": []map[string]string{{"role": "user", "content": "Say hello."}}})
		resp, err = r.call(ctx, n, "anthropic", "/v1/messages", "application/json", body, hdr)
		want = "400 budget_exceeded" // Anthropic's invalid_request_error
	}
	if err != nil {
		return "transport error", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	out := outcomeOf(resp)
	return out, expect(out, want)
}

// checkDirect sends a CheckRequest as Envoy would for a worker's chat
// call, straight to call n's member; it returns the answer and, for an
// allowed call, the reservation it holds.
func (r *rig) checkDirect(ctx context.Context, n int64, cr *authv3.CheckRequest) (*authv3.CheckResponse, string, error) {
	resp, err := r.auth[r.memberOf(n)].Check(ctx, cr)
	if err != nil {
		return nil, "", err
	}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == authz.HeaderReservation {
			return resp, h.GetHeader().GetValue(), nil
		}
	}
	return resp, "", nil
}

// chatCheck is the CheckRequest of a chat call to OpenAI.
func chatCheck(n int64, clientID, path string, body []byte) *authv3.CheckRequest {
	id := fmt.Sprintf("soak-%d", n)
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: id, Method: http.MethodPost, Host: "127.0.0.1:10001", Path: path, Scheme: "http", Protocol: "HTTP/1.1",
			Headers: map[string]string{":authority": "127.0.0.1:10001", ":path": path, ":method": http.MethodPost,
				"content-type": "application/json", clientHeader: clientID, "x-request-id": id,
				"x-envoy-auth-partial-body": "false"},
			RawBody: body, Size: int64(len(body)),
		}},
		ContextExtensions: map[string]string{"upstream_host": "api.openai.com"},
	}}
}

// apiSettle is a service that calls Tollgate's Check itself and settles
// through the JSON API: at a cost, by release, or twice (the second is a
// repeat, answered as the first).
func apiSettle(ctx context.Context, r *rig, n int64) (string, error) {
	resp, id, err := r.checkDirect(ctx, n, chatCheck(n, client(n), "/v1/chat/completions", chatBody("gpt-4.1-nano", 100, false, false)))
	if err != nil {
		return "check failed", err
	}
	if id == "" {
		return checkOutcome(resp), expect(checkOutcome(resp), busy...)
	}
	m := r.members[r.memberOf(n)]
	path, body := "/api/reservations/"+id+"/settle", []byte(`{"actual_cost_usd":"0.000001"}`)
	if n%3 == 1 {
		path, body = "/api/reservations/"+id+"/release", nil
	}
	var st authz.SettleReply
	code, err := m.apiDo(ctx, http.MethodPost, path, body, &st)
	if err != nil || code != http.StatusOK {
		return fmt.Sprint(code), fmt.Errorf("%s: %d %v", path, code, err)
	}
	out := st.Outcome
	if n%3 == 2 {
		var again authz.SettleReply
		code, err := m.apiDo(ctx, http.MethodPost, path, body, &again)
		if err != nil || code != http.StatusOK || !again.Repeat || again.Spent != st.Spent {
			return "repeat " + fmt.Sprint(code), fmt.Errorf("a repeated settle answered %d %+v (%v), want the first's outcome %+v marked repeat", code, again, err, st)
		}
		out += " then repeated"
	}
	return out, nil
}

// neverSettled: admitted, then nothing: the reservation lapses at the
// policy's TTL and is committed at its estimate.
func neverSettled(ctx context.Context, r *rig, n int64) (string, error) {
	resp, id, err := r.checkDirect(ctx, n, chatCheck(n, client(n), "/v1/chat/completions", chatBody("gpt-4.1-nano", 10, false, false)))
	if err != nil {
		return "check failed", err
	}
	if id == "" {
		return checkOutcome(resp), expect(checkOutcome(resp), busy...)
	}
	return "admitted, left to lapse", nil
}
