package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Outcome is what became of one call, as the worker saw it.
type Outcome uint8

const (
	Admitted   Outcome = iota // went out at once, as it was sent
	Held                      // waited in Tollgate's queue, then went out
	Downgraded                // went out rewritten (x-tollgate-optimized names a downgrade)
	Denied                    // refused by Tollgate (a 429 or 403 with x-tollgate-reason)
	Failed                    // anything else: an upstream error, a transport error
	numOutcomes
)

func (o Outcome) String() string {
	return [...]string{"admitted", "held", "downgraded", "denied", "failed"}[o]
}

// result is one call as the driver records it.
type result struct {
	Tier    string
	Outcome Outcome
	Reason  string // x-tollgate-reason of a denial
	Latency time.Duration
}

// classify reads an answer the way a worker would: Tollgate's headers on
// the reply say whether the call waited, was rewritten or was refused. A
// call both held and rewritten counts as downgraded (what it saved
// matters more than how long it waited).
func classify(status int, h http.Header) (Outcome, string) {
	switch {
	case status/100 == 2:
		if strings.Contains(h.Get("x-tollgate-optimized"), "downgrade") {
			return Downgraded, ""
		}
		if h.Get("x-tollgate-queue-wait") != "" {
			return Held, ""
		}
		return Admitted, ""
	case h.Get("x-tollgate-reason") != "":
		return Denied, h.Get("x-tollgate-reason")
	}
	return Failed, fmt.Sprintf("HTTP %d", status)
}

// profile is one client of the demo: a tier, the classes its workers send
// in turn, the model it asks for, and how many workers send for it.
type profile struct {
	Client  string
	Tier    string
	Classes []string
	Model   string
	Workers int
}

// profiles are the demo's clients (deploy/demo/policy.yaml names them).
var profiles = []profile{
	{Client: "bigco", Tier: "enterprise", Classes: []string{"immediate", "normal"}, Model: "gpt-4o", Workers: 2},
	{Client: "acme", Tier: "premium", Classes: []string{"normal", "batch", "immediate"}, Model: "gpt-4o", Workers: 2},
	{Client: "shop", Tier: "standard", Classes: []string{"batch", "normal"}, Model: "gpt-4o", Workers: 2},
	{Client: "hobby", Tier: "basic", Classes: []string{"normal", "immediate"}, Model: "gpt-4o", Workers: 1},
}

// driver sends the profiles' calls through the Envoy stand-ins until its
// context ends, spreading the workers over the members.
type driver struct {
	fronts []string // base URLs of the stand-ins
	pause  time.Duration
	client *http.Client
	record func(result)
}

// prompt is about 60 tokens of text; max_tokens 200 makes each call's
// estimate about 260 tokens of the pool.
const prompt = "Summarise the attached quarterly report in three bullet points for the finance team, " +
	"keeping every figure exact and naming the region each figure belongs to. Keep it short."

func (d *driver) run(ctx context.Context) {
	var wg sync.WaitGroup
	n := 0
	for _, p := range profiles {
		for w := range p.Workers {
			front := d.fronts[n%len(d.fronts)]
			n++
			wg.Add(1)
			go func() { defer wg.Done(); d.worker(ctx, p, w, front) }()
		}
	}
	wg.Wait()
}

func (d *driver) worker(ctx context.Context, p profile, w int, front string) {
	body := fmt.Sprintf(`{"model":%q,"max_tokens":200,"messages":[{"role":"user","content":%q}]}`, p.Model, prompt)
	for i := w; ctx.Err() == nil; i++ {
		class := p.Classes[i%len(p.Classes)]
		r, ok := d.call(ctx, front, p, class, body)
		if !ok {
			return // the demo ended while the call was out: not counted
		}
		d.record(r)
		pause := d.pause/2 + rand.N(d.pause+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
}

func (d *driver) call(ctx context.Context, front string, p profile, class, body string) (result, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, front+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return result{}, false
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("authorization", "Bearer sk-demo-not-a-key")
	req.Header.Set("x-tollgate-client", p.Client)
	req.Header.Set("x-tollgate-priority", class)
	start := time.Now()
	resp, err := d.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return result{}, false
		}
		return result{Tier: p.Tier, Outcome: Failed, Reason: "transport", Latency: time.Since(start)}, true
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if ctx.Err() != nil {
		return result{}, false
	}
	o, reason := classify(resp.StatusCode, resp.Header)
	return result{Tier: p.Tier, Outcome: o, Reason: reason, Latency: time.Since(start)}, true
}
