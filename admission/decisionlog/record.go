// Package decisionlog writes admission's decisions and settles as JSON
// lines (one object a line), reads them back, and replays them under
// another policy (see docs/replay.md). It is the file side of
// admission.DecisionLog: admission knows nothing of files.
//
// A line never holds a request body or a header: what a call was about is
// its route, host, path, model and sizes (tokens, units), never its
// content or credentials.
package decisionlog

import (
	"encoding/json"
	"time"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

// Version is the format's version, written on every line ("v"). A reader
// accepts lines of its version and older, and ignores fields it does not
// know, so that a newer Tollgate's log stays readable.
const Version = 1

// Kinds of line.
const (
	KindStart    = "start"    // a writer opened the file: the policy in force
	KindDecision = "decision" // one admission decision
	KindSettle   = "settle"   // one settle or release
)

// PoolUnits is one pool's share of an estimate.
type PoolUnits struct {
	Pool  string `json:"pool"`
	Units int64  `json:"units"`
}

// Line is one line of the log. Money is a decimal dollar string, exact to
// the nano-dollar (policy.Money's form); a duration is Go's form ("1.5s").
type Line struct {
	V    int       `json:"v"`
	Kind string    `json:"kind"`
	Time time.Time `json:"time"`

	// start: the policy in force and how calls are settled (deferred or
	// immediate)
	Policy     string `json:"policy,omitempty"`
	Settlement string `json:"settlement,omitempty"`

	RequestID   string `json:"request_id,omitempty"`
	Reservation string `json:"reservation,omitempty"`
	Client      string `json:"client,omitempty"`
	Tier        string `json:"tier,omitempty"`
	Route       string `json:"route,omitempty"`
	Class       string `json:"class,omitempty"`
	Provider    string `json:"provider,omitempty"`
	Host        string `json:"host,omitempty"`
	Path        string `json:"path,omitempty"`
	Method      string `json:"method,omitempty"`
	// Outcome is the verdict's outcome (allowed, denied, cached, ...) for
	// a decision, settled or released for a settle; Reason its code.
	Outcome    string      `json:"outcome,omitempty"`
	Reason     string      `json:"reason,omitempty"`
	Allowed    bool        `json:"allowed,omitempty"`
	Held       bool        `json:"held,omitempty"`
	Wait       string      `json:"wait,omitempty"`
	Model      string      `json:"model,omitempty"`
	Requested  string      `json:"requested_model,omitempty"`
	Rules      []string    `json:"rules,omitempty"`
	Downgraded bool        `json:"downgraded,omitempty"`
	Estimate   string      `json:"estimate,omitempty"`
	Reserve    string      `json:"reserve,omitempty"`
	Actual     string      `json:"actual,omitempty"`
	Pools      []PoolUnits `json:"pools,omitempty"`
	// InputTokens and OutputTokens: a decision's estimate of the call as
	// sent (before a rewrite); a settle's reported usage.
	InputTokens  int64 `json:"input_tokens,omitempty"`
	OutputTokens int64 `json:"output_tokens,omitempty"`
}

// decisionLine is rec as a line.
func decisionLine(rec admission.DecisionRecord) Line {
	l := Line{V: Version, Kind: KindDecision, Time: rec.Time.UTC(), RequestID: rec.RequestID, Reservation: rec.Reservation,
		Client: rec.Client, Tier: rec.Tier, Route: rec.Route, Class: rec.Class, Provider: rec.Provider, Host: rec.Host,
		Path: rec.Path, Method: rec.Method, Outcome: rec.Outcome, Reason: rec.Reason, Allowed: rec.Allowed, Held: rec.Held,
		Model: rec.Model, Requested: rec.RequestedModel, Rules: rec.Rules, Downgraded: rec.Downgraded,
		Estimate: rec.Estimate.String(), Reserve: rec.Reserve.String(), InputTokens: rec.InputTokens, OutputTokens: rec.OutputTokens}
	if rec.Held || rec.Wait > 0 {
		l.Wait = rec.Wait.String()
	}
	for _, p := range rec.Pools {
		l.Pools = append(l.Pools, PoolUnits(p))
	}
	return l
}

// settleLine is rec as a line.
func settleLine(rec admission.SettleRecord) Line {
	return Line{V: Version, Kind: KindSettle, Time: rec.Time.UTC(), RequestID: rec.RequestID, Reservation: rec.Reservation,
		Client: rec.Client, Tier: rec.Tier, Route: rec.Route, Model: rec.Model, Outcome: rec.Outcome,
		Estimate: rec.Estimate.String(), Actual: rec.Actual.String(), InputTokens: rec.InputTokens, OutputTokens: rec.OutputTokens}
}

// money reads a decimal dollar string; "" is zero.
func money(s string) (policy.Money, error) {
	if s == "" {
		return 0, nil
	}
	return policy.ParseMoney(s)
}

// appendLine appends l's JSON and a newline to b.
func appendLine(b []byte, l *Line) ([]byte, error) {
	j, err := json.Marshal(l)
	if err != nil {
		return b, err
	}
	return append(append(b, j...), '\n'), nil
}
