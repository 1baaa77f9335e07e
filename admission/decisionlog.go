package admission

import (
	"time"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// DecisionLog receives one record per decision and one per settle, for an
// audit trail that `tollgate replay` can run again under another policy.
// It is declared here, by its consumer, so that admission knows nothing of
// files: the writer lives in admission/decisionlog.
//
// Both methods are called on the request path, from many goroutines at
// once: they must be safe for concurrent use and must never block (a full
// sink drops the record and counts it). They own the record they are given.
// A record carries no request body and no header: what the call was about
// is its route, model and sizes in tokens or units, never its content.
type DecisionLog interface {
	Decision(DecisionRecord)
	Settled(SettleRecord)
}

// PoolUnits is what an estimate charges one pool.
type PoolUnits struct {
	Pool  string
	Units int64
}

// DecisionRecord is one decision as the log keeps it: who, what, the
// estimate, the verdict's outcome and reason, and what a replay needs to
// build the same call again (host, path, method, the requested model and
// the tokens the estimate counted, before any rewrite).
type DecisionRecord struct {
	Time        time.Time
	RequestID   string
	Reservation string // the id a settle names (deferred settlement)
	Client      string
	Tier        string
	Route       string
	Class       string
	Host, Path  string
	Method      string
	Outcome     string // an Outcome
	Reason      string
	Allowed     bool
	Held        bool          // the call waited in the hold queue
	Wait        time.Duration // how long it waited
	// Model is the model the call was estimated (and sent) with;
	// RequestedModel the one the worker asked for; Rules the optimize rules
	// that rewrote it, in policy order.
	Model, RequestedModel string
	Rules                 []string
	Downgraded            bool
	Estimate              policy.Money
	Reserve               policy.Money
	Pools                 []PoolUnits
	// InputTokens and OutputTokens are the estimate of the call as the
	// worker sent it (before a rewrite): what a replay asks for again.
	InputTokens, OutputTokens int64
	Provider                  string
}

// SettleRecord is one settle: the call's actual cost and usage.
type SettleRecord struct {
	Time        time.Time
	RequestID   string // "" when the settle came through the API
	Reservation string
	Client      string
	Tier        string
	Route       string
	Model       string
	Outcome     string // settled or released
	Estimate    policy.Money
	Actual      policy.Money
	// InputTokens and OutputTokens are the usage the response reported
	// (zero when it reported none).
	InputTokens, OutputTokens int64
}

// logDecision hands v to the decision log, if there is one.
func (s *Service) logDecision(r *Request, v *Verdict) {
	if s.dlog == nil {
		return
	}
	rec := DecisionRecord{Time: s.clock.Now(), RequestID: r.ID, Reservation: v.Reservation, Client: v.Client,
		Tier: v.Tier, Route: v.Route, Host: r.Host, Path: r.Path, Method: r.Method, Outcome: string(v.Outcome),
		Reason: v.Reason, Allowed: v.Allowed, Held: v.QueueID != "", Wait: v.QueueWait, Provider: string(v.Provider),
		Model: v.Estimate.Model, RequestedModel: v.Estimate.Model, Estimate: v.Estimate.Cost, Reserve: v.Estimate.Reserve,
		InputTokens: v.Estimate.InputTokens, OutputTokens: v.Estimate.OutputTokens}
	if v.Tier != "" {
		rec.Class = v.Class.String()
	}
	if len(v.Estimate.Pools) > 0 {
		rec.Pools = make([]PoolUnits, 0, len(v.Estimate.Pools))
		for _, p := range v.Estimate.Pools {
			if p.Pool != nil {
				rec.Pools = append(rec.Pools, PoolUnits{Pool: p.Pool.Name, Units: p.Units})
			}
		}
	}
	if o := v.Optimized; o != nil {
		rec.Rules = o.Rules
		rec.RequestedModel = o.Before.Model
		rec.InputTokens, rec.OutputTokens = o.Before.InputTokens, o.Before.OutputTokens
		rec.Downgraded = o.DowngradedFrom != ""
	}
	s.dlog.Decision(rec)
}

// logSettled hands a settle to the decision log, if there is one.
func logSettled(dlog DecisionLog, clock interface{ Now() time.Time }, p *pendingCall, id, outcome string, actual policy.Money, u costing.Usage) {
	if dlog == nil {
		return
	}
	rec := SettleRecord{Time: clock.Now(), Reservation: id, Outcome: outcome, Actual: actual,
		InputTokens: u.InputTokens, OutputTokens: u.OutputTokens}
	if p != nil {
		rec.Client, rec.Tier, rec.Model, rec.Estimate = p.client, p.tier, p.est.Model, p.est.Cost
		rec.RequestID = p.requestID
		if p.route != nil {
			rec.Route = p.route.Name
		}
	}
	dlog.Settled(rec)
}
