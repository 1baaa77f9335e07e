package decisionlog

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

// Stats counts one group's calls in one replay.
type Stats struct {
	Calls      int64
	Admitted   int64 // let through upstream (shadow denials and fail-open included)
	Held       int64 // waited in the queue, whatever came of it
	Refused    int64 // refused: any reason
	Downgraded int64 // sent with a cheaper model
	Cached     int64 // answered from the cache
	Spend      policy.Money
	// RefusedBy counts refusals by reason code.
	RefusedBy map[string]int64
}

func (st *Stats) add(c *Call) {
	v := &c.Verdict
	st.Calls++
	switch {
	case v.Outcome == admission.OutcomeCached:
		st.Cached++
	case v.Allowed:
		st.Admitted++
	default:
		st.Refused++
		if st.RefusedBy == nil {
			st.RefusedBy = map[string]int64{}
		}
		st.RefusedBy[v.Reason]++
	}
	if v.Held {
		st.Held++
	}
	if v.Downgraded {
		st.Downgraded++
	}
	st.Spend += c.Spend
}

// Row is one group under both policies.
type Row struct {
	Key       string
	Base, New Stats
}

// Changed reports whether the group fares differently.
func (r Row) Changed() bool {
	b, n := r.Base, r.New
	return b.Calls != n.Calls || b.Admitted != n.Admitted || b.Held != n.Held || b.Refused != n.Refused ||
		b.Downgraded != n.Downgraded || b.Cached != n.Cached || b.Spend != n.Spend
}

// Report compares two replays of one log.
type Report struct {
	Base, New string // the policies' names
	Decisions int
	Total     Row
	Tiers     []Row // by the tier each policy gave the call ("none": unknown client)
	Clients   []Row
}

// Compare replays lg under base and under next and groups the outcomes
// per tier and per client.
func Compare(ctx context.Context, lg *Log, base, next *policy.Set, baseName, nextName string) (*Report, error) {
	b, err := Replay(ctx, lg, base)
	if err != nil {
		return nil, fmt.Errorf("base policy: %w", err)
	}
	n, err := Replay(ctx, lg, next)
	if err != nil {
		return nil, fmt.Errorf("new policy: %w", err)
	}
	rep := &Report{Base: baseName, New: nextName, Decisions: len(b.Calls), Total: Row{Key: "total"}}
	tiers, clients := map[string]*Row{}, map[string]*Row{}
	row := func(m map[string]*Row, k string) *Row {
		if m[k] == nil {
			m[k] = &Row{Key: k}
		}
		return m[k]
	}
	tierOf := func(c *Call) string {
		if c.Verdict.Tier == "" {
			return "none"
		}
		return c.Verdict.Tier
	}
	clientOf := func(c *Call) string {
		if c.Entry.Client == "" {
			return "(none)"
		}
		return c.Entry.Client
	}
	for _, c := range b.Calls {
		rep.Total.Base.add(c)
		row(tiers, tierOf(c)).Base.add(c)
		row(clients, clientOf(c)).Base.add(c)
	}
	for _, c := range n.Calls {
		rep.Total.New.add(c)
		row(tiers, tierOf(c)).New.add(c)
		row(clients, clientOf(c)).New.add(c)
	}
	rep.Tiers, rep.Clients = sorted(tiers), sorted(clients)
	return rep, nil
}

func sorted(m map[string]*Row) []Row {
	out := make([]Row, 0, len(m))
	for _, r := range m {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b Row) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// WriteText writes the report as tables: one row per tier, then per
// client, each cell "base→new (change)", or the value alone when equal.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "replay of %d decisions: base %s, new %s\n", r.Decisions, r.Base, r.New)
	table := func(title string, rows []Row) {
		fmt.Fprintf(tw, "\n%s\tadmitted\theld\trefused\tdowngraded\tcached\tspend ($)\n", title)
		for _, row := range rows {
			b, n := row.Base, row.New
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", row.Key, count(b.Admitted, n.Admitted), count(b.Held, n.Held),
				count(b.Refused, n.Refused), count(b.Downgraded, n.Downgraded), count(b.Cached, n.Cached), dollars(b.Spend, n.Spend))
		}
	}
	table("tier", append(slices.Clone(r.Tiers), r.Total))
	table("client", r.Clients)
	if reasons := reasonKeys(r.Total); len(reasons) > 0 {
		fmt.Fprintf(tw, "\nrefused by reason\tcalls\n")
		for _, k := range reasons {
			fmt.Fprintf(tw, "%s\t%s\n", k, count(r.Total.Base.RefusedBy[k], r.Total.New.RefusedBy[k]))
		}
	}
	if !r.Total.Changed() && !anyChanged(r.Tiers) && !anyChanged(r.Clients) {
		fmt.Fprintln(tw, "\nno change")
	}
	return tw.Flush()
}

// reasonKeys are the reasons of the row's refusals under either policy,
// sorted.
func reasonKeys(r Row) []string {
	var keys []string
	for _, m := range []map[string]int64{r.Base.RefusedBy, r.New.RefusedBy} {
		for k := range m {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys
}

func anyChanged(rows []Row) bool { return slices.ContainsFunc(rows, Row.Changed) }

func count(b, n int64) string {
	if b == n {
		return fmt.Sprint(b)
	}
	return fmt.Sprintf("%d→%d (%+d)", b, n, n-b)
}

func dollars(b, n policy.Money) string {
	if b == n {
		return b.String()
	}
	d := (n - b).String()
	if n > b {
		d = "+" + d
	}
	return fmt.Sprintf("%s→%s (%s)", b, n, d)
}

// jsonStats is Stats with money as a decimal string.
type jsonStats struct {
	Calls      int64            `json:"calls"`
	Admitted   int64            `json:"admitted"`
	Held       int64            `json:"held"`
	Refused    int64            `json:"refused"`
	Downgraded int64            `json:"downgraded"`
	Cached     int64            `json:"cached"`
	Spend      string           `json:"spend"`
	SpendNanos int64            `json:"spend_nanos"`
	RefusedBy  map[string]int64 `json:"refused_by,omitempty"`
}

type jsonRow struct {
	Key     string    `json:"key"`
	Base    jsonStats `json:"base"`
	New     jsonStats `json:"new"`
	Changed bool      `json:"changed"`
}

func toJSON(st Stats) jsonStats {
	return jsonStats{Calls: st.Calls, Admitted: st.Admitted, Held: st.Held, Refused: st.Refused, Downgraded: st.Downgraded,
		Cached: st.Cached, Spend: st.Spend.String(), SpendNanos: int64(st.Spend), RefusedBy: st.RefusedBy}
}

func rowsJSON(rows []Row) []jsonRow {
	out := make([]jsonRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, jsonRow{Key: r.Key, Base: toJSON(r.Base), New: toJSON(r.New), Changed: r.Changed()})
	}
	return out
}

// WriteJSON writes the report as one indented JSON object (maps' keys
// sorted by encoding/json: the output is byte-for-byte stable).
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Base      string    `json:"base"`
		New       string    `json:"new"`
		Decisions int       `json:"decisions"`
		Total     jsonRow   `json:"total"`
		Tiers     []jsonRow `json:"tiers"`
		Clients   []jsonRow `json:"clients"`
	}{r.Base, r.New, r.Decisions, rowsJSON([]Row{r.Total})[0], rowsJSON(r.Tiers), rowsJSON(r.Clients)})
}
