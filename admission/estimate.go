package admission

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// EstimatePool is one pool's share of an estimate.
type EstimatePool struct {
	Pool  string      `json:"pool"`
	Unit  policy.Unit `json:"unit"`
	Units int64       `json:"units"`
}

// EstimateBreakdown splits an estimate's money (dollars, as decimal
// strings).
type EstimateBreakdown struct {
	Input  string `json:"input_usd"`
	Output string `json:"output_usd"`
	Images string `json:"images_usd"`
	Audio  string `json:"audio_usd"`
	Units  string `json:"unit_priced_usd"` // pools charged by their own unit price
}

// EstimateReport answers POST /api/estimate and `tollgate estimate`.
type EstimateReport struct {
	Route          string            `json:"route"`
	Provider       policy.Provider   `json:"provider"`
	Model          string            `json:"model,omitempty"`
	PriceEntry     string            `json:"price_entry,omitempty"`
	ModelKnown     bool              `json:"model_known"`
	Kind           string            `json:"kind,omitempty"`
	Stream         bool              `json:"stream"`
	Exact          bool              `json:"exact"`
	InputTokens    int64             `json:"input_tokens"`
	OutputTokens   int64             `json:"output_tokens"`
	Images         int64             `json:"images"`
	Segments       int64             `json:"segments"`
	Recipients     int64             `json:"recipients"`
	Pools          []EstimatePool    `json:"pools"`
	Cost           string            `json:"cost_usd"`
	Breakdown      EstimateBreakdown `json:"breakdown"`
	Strategy       policy.Strategy   `json:"strategy"`
	ReservePercent int64             `json:"reserve_percent"`
	Reserve        string            `json:"reserve_usd"`
}

// ErrNoRoute is returned for a call no route of the policy matches.
var ErrNoRoute = errors.New("no route matches")

// EstimateCall estimates a call to rawURL (https://host/path) with body
// under set, as Check would, with nothing reserved.
func EstimateCall(set *policy.Set, est costing.Estimator, rawURL, contentType string, body []byte) (EstimateReport, error) {
	host, path, err := callURL(rawURL)
	if err != nil {
		return EstimateReport{}, err
	}
	call := costing.NewCall(path, contentType, body, int64(len(body)))
	route := matchRoute(set, host, path, &call)
	if route == nil {
		return EstimateReport{}, fmt.Errorf("%w %s%s", ErrNoRoute, host, path)
	}
	return estimateReport(route, est.Estimate(set, route, call)), nil
}

// callURL reads the host and canonical path of a call's absolute URL, as
// Check would see them.
func callURL(rawURL string) (host, path string, err error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return "", "", fmt.Errorf("url %q: want an absolute URL such as https://api.openai.com/v1/chat/completions", rawURL)
	}
	path = u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if path, err = CanonicalPath(path); err != nil {
		return "", "", fmt.Errorf("url %q: %w", rawURL, err)
	}
	return u.Host, path, nil
}

// estimateReport describes estimate e of a call on route.
func estimateReport(route *policy.Route, e costing.Estimate) EstimateReport {
	rep := EstimateReport{
		Route: route.Name, Provider: route.Provider, Model: e.Model, PriceEntry: e.PriceEntry, ModelKnown: e.ModelKnown,
		Kind: e.Kind, Stream: e.Stream, Exact: e.Exact, InputTokens: e.InputTokens, OutputTokens: e.OutputTokens,
		Images: e.Images, Segments: e.Segments, Recipients: e.Recipients, Cost: e.Cost.String(),
		Breakdown: EstimateBreakdown{Input: e.InputCost.String(), Output: e.OutputCost.String(), Images: e.ImageCost.String(), Audio: e.AudioCost.String(), Units: e.UnitCost.String()},
		Strategy:  e.Strategy, ReservePercent: e.ReservePercent, Reserve: e.Reserve.String(),
	}
	if !route.LLM() {
		rep.InputTokens, rep.OutputTokens = 0, 0
	}
	for _, pc := range e.Pools {
		rep.Pools = append(rep.Pools, EstimatePool{Pool: pc.Pool.Name, Unit: pc.Pool.Unit, Units: pc.Units})
	}
	return rep
}

// matchRoute is the route Check picks: by host and path, and by the body's
// model when some route tells models apart.
func matchRoute(set *policy.Set, host, path string, call *costing.Call) *policy.Route {
	var model string
	if set.RouteWantsModel(host, path) {
		model = call.Model() // unreadable: matched as having no model; the estimate reuses the decode
	}
	return set.MatchRoute(host, path, model)
}
