package admission

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tollgate/tollgate/costing"
)

// AnalyzeReport answers POST /api/optimize/analyze: what the optimizer
// would do to a call now, with nothing reserved.
type AnalyzeReport struct {
	Client string `json:"client"`
	Tier   string `json:"tier"`
	Class  string `json:"class"`
	// PressurePercent is the client's budget pressure the rules saw (-1:
	// no budget); Aggressive whether the client is in aggressive mode.
	PressurePercent int64 `json:"pressure_percent"`
	Aggressive      bool  `json:"aggressive"`
	// Rules that fired and the strategies that changed the body; none
	// when the call goes as it is.
	Rules          []string `json:"rules"`
	Strategies     []string `json:"strategies"`
	DowngradedFrom string   `json:"downgraded_from,omitempty"`
	// Body is the body that would go upstream.
	Body   json.RawMessage `json:"body"`
	Before EstimateReport  `json:"before"`
	After  EstimateReport  `json:"after"`
	// Saving is the estimate before less the estimate after (dollars).
	Saving string `json:"estimated_saving_usd"`
}

// Analyze reports what the optimizer would do to a call of client to
// rawURL with headers (lower-case names; the class and opt-out headers
// count) and body, as Check would decide it now, reserving nothing. The
// client's budget pressure is read from the store.
func (s *Service) Analyze(ctx context.Context, clientID, rawURL string, headers map[string]string, body []byte) (AnalyzeReport, error) {
	set := s.policies.Policy()
	host, path, err := callURL(rawURL)
	if err != nil {
		return AnalyzeReport{}, err
	}
	client, ok := set.Client(clientID)
	if !ok {
		return AnalyzeReport{}, ErrUnknownClient
	}
	if headers == nil {
		headers = map[string]string{}
	}
	r := &Request{Client: clientID, Host: host, Path: path, Headers: headers, Body: body, BodySize: int64(len(body))}
	call := costing.NewCall(path, headers["content-type"], body, int64(len(body)))
	route := matchRoute(set, host, path, &call)
	if route == nil {
		return AnalyzeReport{}, fmt.Errorf("%w %s%s", ErrNoRoute, host, path)
	}
	if st, err := s.store.Usage(ctx, set.Defaults.Period(s.clock.Now()), Chain(client), time.Time{}); err == nil {
		s.pressure.note(client.ID, st.Budgets)
	}
	class := classOf(set, r, route, client)
	pressure := s.pressure.get(client.ID)
	rep := AnalyzeReport{Client: clientID, Tier: client.Tier.Name, Class: class.String(), PressurePercent: pressure,
		Aggressive: set.Optimize.IsAggressive(client.Tier.Name, client.ID, pressure), Rules: []string{}, Strategies: []string{}}
	before := s.est.Estimate(set, route, call)
	rep.Before = estimateReport(route, before)
	out, outRoute, opt, fit := s.optimizeCall(set, r, path, route, client, class, call)
	after := before
	if opt != nil {
		after = s.est.Estimate(set, outRoute, out)
	}
	if fit > 0 {
		var fitted bool
		if out, opt, fitted = s.fitToPool(set, outRoute, client, out, after, opt, fit); fitted {
			after = s.est.Estimate(set, outRoute, out)
		}
	}
	rep.After = estimateReport(outRoute, after)
	rep.Body = json.RawMessage(out.Body)
	if !json.Valid(out.Body) {
		rep.Body, _ = json.Marshal(string(out.Body))
	}
	if opt != nil {
		o := opt.report()
		rep.Rules, rep.Strategies, rep.DowngradedFrom = o.Rules, o.Strategies, o.DowngradedFrom
	}
	rep.Saving = (before.Cost - after.Cost).String()
	return rep, nil
}
