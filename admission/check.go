package admission

import (
	"context"
	"time"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// The dry run: what Decide would answer for a call now, with nothing
// taken. It resolves, optimizes and estimates as Decide does, plans the
// same admission, and asks the store to Peek at it (limiter.Peeker): no
// reservation, no queue slot, no concurrency slot, no cache flight, no
// decision counted. A call the store would refuse but whose class may wait
// is reported as held, with the wait the store foresees.

// CheckAnswer is what a check found: Admit, Hold or Refuse.
type CheckAnswer string

// Answers of a check.
const (
	CheckAdmit  CheckAnswer = "admit"
	CheckHold   CheckAnswer = "hold"
	CheckRefuse CheckAnswer = "refuse"
)

// CheckResult answers POST /api/resources/check. Money is a decimal string
// of dollars.
type CheckResult struct {
	Answer CheckAnswer `json:"answer"`
	// Reason is the refusal's code, or what a held call waits for
	// (rate_limited, concurrency, queued_behind, off_peak, scheduler_stopped).
	Reason string `json:"reason,omitempty"`
	Client string `json:"client,omitempty"`
	Tier   string `json:"tier,omitempty"`
	Route  string `json:"route,omitempty"`
	Pool   string `json:"pool,omitempty"`
	Class  string `json:"class,omitempty"`
	Model  string `json:"model,omitempty"`
	// EstimatedCost is the call's expected cost; Reserve what an admission
	// would hold for it.
	EstimatedCost string `json:"estimated_cost_usd,omitempty"`
	Reserve       string `json:"reserve_usd,omitempty"`
	// EstimatedWait, for a held call, is at least how long it would wait
	// (the store's refill time, the off-peak window); calls queued ahead of
	// it may make it longer. RetryAfter, for a refusal, is when a retry
	// could pass (0: waiting does not help).
	EstimatedWait float64 `json:"estimated_wait_seconds,omitempty"`
	RetryAfter    float64 `json:"retry_after_seconds,omitempty"`
	// Queue is the line a held call would join, QueueDepth how many wait
	// in it now.
	Queue      string `json:"queue,omitempty"`
	QueueDepth int    `json:"queue_depth,omitempty"`
	// Detail says more, for people (why a request was invalid).
	Detail string `json:"detail,omitempty"`
}

// Check answers what Decide would for r now, changing nothing. The error is
// the store's (the caller answers 503).
func (s *Service) Check(ctx context.Context, r *Request) (CheckResult, error) {
	set := s.policies.Policy()
	if r.Invalid != "" {
		return passOr(set.Defaults.InvalidRequest, CheckResult{Reason: ReasonInvalidRequest, Detail: r.Invalid}), nil
	}
	path, err := CanonicalPath(r.Path)
	if err != nil {
		return CheckResult{Answer: CheckRefuse, Reason: ReasonInvalidRequest, Detail: err.Error()}, nil
	}
	call := costing.NewCall(path, r.Headers["content-type"], r.Body, r.BodySize)
	route := matchRoute(set, r.Host, path, &call)
	if route == nil {
		return passOr(set.Defaults.UnmatchedRoute, CheckResult{Reason: ReasonUnmatchedRoute}), nil
	}
	res := CheckResult{Route: route.Name, Client: r.Client}
	switch {
	case r.Client == "" && set.Defaults.MissingClient == policy.Deny:
		res.Answer, res.Reason = CheckRefuse, ReasonMissingClient
		return res, nil
	case r.Client != "":
		if err := policy.ValidClientID(r.Client); err != nil {
			res.Answer, res.Reason, res.Detail = CheckRefuse, ReasonInvalidClient, err.Error()
			return res, nil
		}
	}
	client, ok := set.Client(r.Client)
	if !ok {
		res.Answer, res.Reason = CheckRefuse, ReasonUnknownClient
		return res, nil
	}
	route = set.RouteFor(route, client) // a client's dedicated pool, as the admission plans it
	class := classOf(set, r, route, client)
	res.Tier, res.Class = client.Tier.Name, class.String()
	call, route, _, _ = s.optimizeCall(set, r, path, route, client, class, call)
	est := s.est.Estimate(set, route, call)
	res.Route, res.Model = route.Name, call.Model()
	res.EstimatedCost, res.Reserve, res.Pool = est.Cost.String(), est.Reserve.String(), route.Pools[0].Name
	if est.Cost >= limiter.MaxMoney || est.Reserve >= limiter.MaxMoney {
		res.Answer, res.Reason = CheckRefuse, string(limiter.ReasonExceedsCapacity)
		return res, nil
	}
	now := s.clock.Now()
	var deadline time.Time
	if dl, ok := ctx.Deadline(); ok {
		deadline = dl
	}
	p := makePlan(set, client, class, &est, s.settle, "check-"+s.newID(), now, deadline)
	if !p.offPeak.IsZero() {
		res.Answer, res.Reason, res.RetryAfter = CheckRefuse, ReasonOffPeak, p.offPeak.Sub(now).Seconds()
		return res, nil
	}
	dec, req, err := s.peek(ctx, &p)
	if err != nil {
		return CheckResult{}, err
	}
	p.req = req // the alternative the answer is about (its line, its buckets)
	if i := dec.Tightest(); i >= 0 {
		res.Pool = dec.Buckets[i].Key.Pool
	}
	var line string
	var wait time.Duration
	if p.canWait {
		busy := s.busyLine(p.req)
		switch {
		case busy != "":
			line, res.Reason = busy, "queued_behind"
		case !p.notBefore.IsZero():
			line, res.Reason, wait = firstLine(p.req), ReasonOffPeak, p.notBefore.Sub(now)
		case !dec.Allowed && waitable(dec) && (dec.Reason == limiter.ReasonConcurrency || !now.Add(dec.RetryAfter).After(p.deadline)):
			line, res.Reason = lineOf(dec, p.req), string(dec.Reason)
		}
	}
	if line != "" {
		if dec.Reason == limiter.ReasonBudgetExceeded || dec.Reason == limiter.ReasonExceedsCapacity {
			line = "" // waiting cannot help: refused when its turn comes
		} else {
			if s.queue.Stopped() {
				res.Reason = "scheduler_stopped"
			}
			res.Answer, res.EstimatedWait = CheckHold, max(wait, dec.RetryAfter).Seconds()
			_, res.Queue = LineLabel(line)
			res.QueueDepth = s.queue.Depth(line)
			return res, nil
		}
	}
	if dec.Allowed {
		res.Answer = CheckAdmit
		return res, nil
	}
	v := s.denied(set, client, &p, dec, now, Verdict{})
	if v.Outcome == OutcomeShadowDenied {
		res.Answer, res.Reason = CheckAdmit, "shadow_"+v.Shadow.Reason
		return res, nil
	}
	res.Answer, res.Reason, res.RetryAfter = CheckRefuse, v.Reason, v.RetryAfter.Seconds()
	return res, nil
}

// passOr is the answer for a call the policy passes or refuses per a
// default (invalid_request, unmatched_route).
func passOr(a policy.Action, r CheckResult) CheckResult {
	r.Answer = CheckRefuse
	if a == policy.Allow {
		r.Answer = CheckAdmit
	}
	return r
}
