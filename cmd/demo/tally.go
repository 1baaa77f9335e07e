package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// spend is a client's budget as Tollgate's usage API reports it: decimal
// strings of dollars, shown as they are (no float touches money).
type spend struct {
	Spent, Limit, Saved string
}

// tally counts the driver's results per tier; safe for concurrent use.
type tally struct {
	mu        sync.Mutex
	tiers     []string // in the order of the table
	clients   map[string]string
	counts    map[string]*[numOutcomes]int
	latencies map[string][]time.Duration
	reasons   map[string]int
	spend     map[string]spend // by tier
}

func newTally(ps []profile) *tally {
	t := &tally{clients: map[string]string{}, counts: map[string]*[numOutcomes]int{},
		latencies: map[string][]time.Duration{}, reasons: map[string]int{}, spend: map[string]spend{}}
	for _, p := range ps {
		t.tiers = append(t.tiers, p.Tier)
		t.clients[p.Tier] = p.Client
		t.counts[p.Tier] = &[numOutcomes]int{}
	}
	return t
}

func (t *tally) record(r result) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.counts[r.Tier]
	if !ok {
		return
	}
	c[r.Outcome]++
	t.latencies[r.Tier] = append(t.latencies[r.Tier], r.Latency)
	if r.Outcome == Denied || r.Outcome == Failed {
		t.reasons[r.Outcome.String()+": "+r.Reason]++
	}
}

func (t *tally) setSpend(tier string, s spend) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.spend[tier] = s
}

// totals are the counts over every tier.
func (t *tally) totals() [numOutcomes]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out [numOutcomes]int
	for _, c := range t.counts {
		for o, n := range c {
			out[o] += n
		}
	}
	return out
}

// p99 is the 99th percentile of ds (nearest rank), 0 for none.
func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*99+99)/100 - 1
	return s[min(max(i, 0), len(s)-1)]
}

// table writes one row per tier: its outcomes, spend against budget, p99.
func (t *tally) table(w io.Writer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "TIER\tCLIENT\tCALLS\tADMITTED\tHELD\tDOWNGRADED\tDENIED\tFAILED\tSPENT\tBUDGET\tP99\t")
	for _, tier := range t.tiers {
		c := t.counts[tier]
		calls := 0
		for _, n := range c {
			calls += n
		}
		s := t.spend[tier]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t\n", tier, t.clients[tier], calls,
			c[Admitted], c[Held], c[Downgraded], c[Denied], c[Failed], dollars(s.Spent), dollars(s.Limit), ms(p99(t.latencies[tier])))
	}
	_ = tw.Flush()
}

// summary is the last word: the table, every outcome's total, why calls
// were refused, and what the rewrites saved.
func (t *tally) summary(w io.Writer, elapsed time.Duration) {
	tot := t.totals()
	calls := 0
	for _, n := range tot {
		calls += n
	}
	fmt.Fprintf(w, "\n== summary: %d calls in %s (%.1f/s)\n\n", calls, elapsed.Round(time.Second), float64(calls)/max(elapsed.Seconds(), 1e-9))
	t.table(w)
	fmt.Fprintln(w)
	var parts []string
	for o := range numOutcomes {
		parts = append(parts, fmt.Sprintf("%s %d", Outcome(o), tot[o]))
	}
	fmt.Fprintf(w, "outcomes: %s\n", strings.Join(parts, ", "))

	t.mu.Lock()
	reasons := maps.Clone(t.reasons)
	var saved []string
	for _, tier := range t.tiers {
		if s := t.spend[tier].Saved; s != "" && s != "0" {
			saved = append(saved, fmt.Sprintf("%s %s", t.clients[tier], dollars(s)))
		}
	}
	t.mu.Unlock()
	if len(reasons) > 0 {
		keys := slices.Sorted(maps.Keys(reasons))
		parts = parts[:0]
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %d", k, reasons[k]))
		}
		fmt.Fprintf(w, "refusals: %s\n", strings.Join(parts, ", "))
	}
	if len(saved) > 0 {
		fmt.Fprintf(w, "saved by the optimize rules: %s\n", strings.Join(saved, ", "))
	}
	var missing []string
	for _, o := range []Outcome{Admitted, Held, Downgraded, Denied} {
		if tot[o] == 0 {
			missing = append(missing, o.String())
		}
	}
	if len(missing) == 0 {
		fmt.Fprintln(w, "every outcome seen: admitted, held, downgraded, denied")
	} else {
		fmt.Fprintf(w, "not seen this run: %s (a longer DEMO_DURATION shows more)\n", strings.Join(missing, ", "))
	}
}

// dollars shortens a decimal string of dollars to 6 decimal places.
func dollars(s string) string {
	if s == "" {
		return "-"
	}
	if s == "unlimited" {
		return s
	}
	if i := strings.IndexByte(s, '.'); i >= 0 && len(s) > i+7 {
		s = s[:i+7]
	}
	return "$" + s
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%dms", d.Round(time.Millisecond).Milliseconds())
}

// usageReport is the part of GET /api/usage/{client} the demo shows.
type usageReport struct {
	Budgets []struct {
		Owner string `json:"owner"`
		Limit string `json:"limit_usd"`
		Spent string `json:"spent_usd"`
	} `json:"budgets"`
	SavingsTotal string `json:"savings_total_usd"`
}

// pollSpend reads each client's spend from Tollgate's API.
func pollSpend(ctx context.Context, api, token string, t *tally) {
	for _, tier := range t.tiers {
		client := t.clients[tier]
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+api+"/api/usage/"+client+"/current", nil)
		if err != nil {
			continue
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := plainHTTP.Do(req)
		if err != nil {
			continue
		}
		var u usageReport
		err = json.NewDecoder(resp.Body).Decode(&u)
		_ = resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || len(u.Budgets) == 0 {
			continue
		}
		b := u.Budgets[0]
		for _, x := range u.Budgets {
			if x.Owner == client {
				b = x
			}
		}
		t.setSpend(tier, spend{Spent: b.Spent, Limit: b.Limit, Saved: u.SavingsTotal})
	}
}
