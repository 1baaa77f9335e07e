package policy_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

func TestClassNames(t *testing.T) {
	for i, c := range policy.Classes {
		assert.Equal(t, policy.Class(i), c)
		got, ok := policy.ParseClass(c.String())
		assert.True(t, ok)
		assert.Equal(t, c, got)
	}
	assert.Equal(t, []string{"immediate", "fast", "normal", "batch", "deferred"},
		[]string{policy.Immediate.String(), policy.Fast.String(), policy.Normal.String(), policy.Batch.String(), policy.Deferred.String()})
	c, ok := policy.ParseClass(" BATCH ")
	assert.True(t, ok)
	assert.Equal(t, policy.Batch, c)
	_, ok = policy.ParseClass("urgent")
	assert.False(t, ok)
	assert.Equal(t, "class(9)", policy.Class(9).String())
}

func TestQueueDefaults(t *testing.T) {
	set := mustCompile(t, withPool("routes:", "  r: {pools: [p]}", "tiers:", "  t: {priority: 1, max_concurrent: 1}"))
	q := set.Queue
	assert.Equal(t, policy.DefaultQueue(), q)
	assert.Equal(t, "x-tollgate-priority", q.PriorityHeader)
	for c, want := range map[policy.Class]time.Duration{policy.Immediate: 0, policy.Fast: 2 * time.Second, policy.Normal: 10 * time.Second,
		policy.Batch: time.Minute, policy.Deferred: 5 * time.Minute} {
		assert.Equal(t, want, q.Class(c).MaxWait, c.String())
	}
	assert.Equal(t, 5*time.Minute, q.LongestWait())
	assert.Equal(t, policy.Normal, set.Route("r").Class, "a route states no class: normal")
	assert.Equal(t, policy.Immediate, set.Tiers["t"].MaxClass, "a tier states no cap: any class")
	inside, _ := q.OffPeak(time.Now())
	assert.True(t, inside, "no windows: any time is off-peak")
}

func TestQueueCompile(t *testing.T) {
	set := mustCompile(t, withPool(
		"defaults: {timezone: America/New_York}",
		"routes:", "  r: {pools: [p], class: batch}",
		"tiers:", "  t: {priority: 1, max_concurrent: 1, max_class: normal}",
		"queue:",
		"  priority_header: X-Priority",
		"  wait_horizon: 30s",
		"  fairness_window: 2m",
		"  starvation_alert: 1m",
		"  classes:",
		"    fast: {max_wait: 1s, max_depth: 5, urgency: 25}",
		"    deferred: {max_wait: 1h}",
		"  off_peak:",
		`    - {start: "22:00", end: "06:00"}`,
		`    - {start: "00:00", end: "24:00", days: [sat, Sunday], timezone: Asia/Tokyo}`,
	))
	q := set.Queue
	assert.Equal(t, "x-priority", q.PriorityHeader)
	assert.Equal(t, 30*time.Second, q.WaitHorizon)
	assert.Equal(t, 2*time.Minute, q.FairnessWindow)
	assert.Equal(t, time.Minute, q.StarvationAlert)
	assert.Equal(t, policy.ClassPolicy{MaxWait: time.Second, MaxDepth: 5, Urgency: 25}, q.Class(policy.Fast))
	assert.Equal(t, policy.ClassPolicy{MaxWait: time.Hour, MaxDepth: 10_000, Urgency: 0}, q.Class(policy.Deferred), "unset fields keep their defaults")
	assert.Equal(t, time.Hour, q.LongestWait())
	require.Len(t, q.Windows, 2)
	assert.Equal(t, "America/New_York", q.Windows[0].Location.String(), "a window without a zone is in the policy's")
	assert.Equal(t, "Asia/Tokyo", q.Windows[1].Location.String())
	assert.Equal(t, policy.Batch, set.Route("r").Class)
	assert.Equal(t, policy.Normal, set.Tiers["t"].MaxClass)
}

func TestQueueRefusals(t *testing.T) {
	tests := map[string]struct {
		lines []string
		want  wantErr
	}{
		"unknown class":      {[]string{"queue:", "  classes:", "    urgent: {max_wait: 1s}"}, wantErr{line: 8, path: "queue.classes.urgent", msg: `unknown class "urgent"`}},
		"immediate waits":    {[]string{"queue:", "  classes:", "    immediate: {max_wait: 1s}"}, wantErr{line: 8, path: "queue.classes.immediate.max_wait", msg: "never held"}},
		"bad wait":           {[]string{"queue:", "  classes:", "    fast: {max_wait: soon}"}, wantErr{line: 8, path: "queue.classes.fast.max_wait", msg: "duration"}},
		"negative wait":      {[]string{"queue:", "  classes:", "    fast: {max_wait: -1s}"}, wantErr{line: 8, path: "queue.classes.fast.max_wait", msg: "between 0s and 24h"}},
		"urgency too high":   {[]string{"queue:", "  classes:", "    fast: {urgency: 31}"}, wantErr{line: 8, path: "queue.classes.fast.urgency", msg: "between 0 and 30"}},
		"negative depth":     {[]string{"queue:", "  classes:", "    fast: {max_depth: -1}"}, wantErr{line: 8, path: "queue.classes.fast.max_depth", msg: "between 0 and"}},
		"misspelt key":       {[]string{"queue:", "  wait_horizn: 1m"}, wantErr{line: 7, path: "queue", msg: `did you mean "wait_horizon"`}},
		"horizon zero":       {[]string{"queue:", "  wait_horizon: 0s"}, wantErr{line: 7, path: "queue.wait_horizon", msg: "between 1s and 24h0m0s"}},
		"bad header":         {[]string{"queue:", "  priority_header: \"x priority\""}, wantErr{line: 7, path: "queue.priority_header", msg: "header name"}},
		"window not a list":  {[]string{"queue:", "  off_peak: {start: \"22:00\"}"}, wantErr{line: 7, path: "queue.off_peak", msg: "must be a list"}},
		"window without end": {[]string{"queue:", "  off_peak:", "    - {start: \"22:00\"}"}, wantErr{line: 8, path: "queue.off_peak[0].end", msg: "is required"}},
		"bad time of day":    {[]string{"queue:", "  off_peak:", "    - {start: \"25:00\", end: \"06:00\"}"}, wantErr{line: 8, path: "queue.off_peak[0].start", msg: "time of day"}},
		"bad minutes":        {[]string{"queue:", "  off_peak:", "    - {start: \"22:7\", end: \"06:00\"}"}, wantErr{line: 8, path: "queue.off_peak[0].start", msg: "time of day"}},
		"start at 24:00":     {[]string{"queue:", "  off_peak:", "    - {start: \"24:00\", end: \"06:00\"}"}, wantErr{line: 8, path: "queue.off_peak[0].start", msg: "cannot start at 24:00"}},
		"bad zone":           {[]string{"queue:", "  off_peak:", "    - {start: \"22:00\", end: \"06:00\", timezone: Mars/Olympus}"}, wantErr{line: 8, path: "queue.off_peak[0].timezone", msg: "unknown time zone"}},
		"bad day":            {[]string{"queue:", "  off_peak:", "    - {start: \"22:00\", end: \"06:00\", days: [caturday]}"}, wantErr{line: 8, path: "queue.off_peak[0].days", msg: `unknown day "caturday"`}},
		"route class":        {[]string{"routes:", "  r: {pools: [p], class: urgent}"}, wantErr{line: 7, path: "routes.r.class", msg: `unknown class "urgent"`}},
		"tier cap":           {[]string{"tiers:", "  t: {priority: 1, max_concurrent: 1, max_class: top}"}, wantErr{line: 7, path: "tiers.t.max_class", msg: `unknown class "top"`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := compile(withPool(tc.lines...))
			tc.want.file = "x.yaml"
			requireHasError(t, policyErrors(t, err), tc.want)
		})
	}
	// A setting given in two files is refused in the second.
	_, err := policy.Compile(policy.Source{Name: "a.yaml", Data: withPool("queue:", "  wait_horizon: 1m")},
		policy.Source{Name: "b.yaml", Data: lines("queue:", "  wait_horizon: 2m")})
	requireHasError(t, policyErrors(t, err), wantErr{file: "b.yaml", line: 2, path: "queue.wait_horizon", msg: "already set at a.yaml:7"})
}

// TestOffPeak: windows across midnight, in their own time zone, on chosen
// days, through a daylight-saving change.
func TestOffPeak(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	require.NoError(t, err)
	tokyo, err := time.LoadLocation("Asia/Tokyo")
	require.NoError(t, err)
	night := policy.Queue{Windows: []policy.Window{{Start: 22 * time.Hour, End: 6 * time.Hour, Location: ny}}}
	weekend := policy.Queue{Windows: []policy.Window{{Start: 0, End: 24 * time.Hour, Location: tokyo, Days: [7]bool{time.Saturday: true, time.Sunday: true}}}}
	at := func(loc *time.Location, y int, m time.Month, d, h, min int) time.Time {
		return time.Date(y, m, d, h, min, 0, 0, loc)
	}

	tests := map[string]struct {
		q      policy.Queue
		t      time.Time
		inside bool
		opens  time.Time // when not inside
	}{
		"afternoon: tonight at 22:00":     {night, at(ny, 2026, 12, 1, 15, 0), false, at(ny, 2026, 12, 1, 22, 0)},
		"22:00 sharp is inside":           {night, at(ny, 2026, 12, 1, 22, 0), true, time.Time{}},
		"after midnight, still inside":    {night, at(ny, 2026, 12, 2, 3, 30), true, time.Time{}},
		"06:00 sharp is outside":          {night, at(ny, 2026, 12, 2, 6, 0), false, at(ny, 2026, 12, 2, 22, 0)},
		"asked in UTC, answered in NY":    {night, time.Date(2026, 12, 2, 3, 30, 0, 0, time.UTC), true, time.Time{}}, // 22:30 EST
		"UTC noon is NY morning":          {night, time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC), false, at(ny, 2026, 12, 2, 22, 0)},
		"spring forward: 22:00 wall time": {night, at(ny, 2026, 3, 8, 12, 0), false, at(ny, 2026, 3, 8, 22, 0)},
		"friday: the weekend opens":       {weekend, at(tokyo, 2026, 12, 4, 18, 0), false, at(tokyo, 2026, 12, 5, 0, 0)},
		"saturday":                        {weekend, at(tokyo, 2026, 12, 5, 18, 0), true, time.Time{}},
		"sunday night":                    {weekend, at(tokyo, 2026, 12, 6, 23, 59), true, time.Time{}},
		"monday: next saturday":           {weekend, at(tokyo, 2026, 12, 7, 0, 0), false, at(tokyo, 2026, 12, 12, 0, 0)},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			inside, opens := tc.q.OffPeak(tc.t)
			assert.Equal(t, tc.inside, inside)
			if !tc.inside {
				assert.True(t, tc.opens.Equal(opens), "opens %v, want %v", opens, tc.opens)
			}
		})
	}
}
