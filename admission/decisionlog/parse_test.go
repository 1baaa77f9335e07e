package decisionlog

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/policy"
)

const goodDecision = `{"v":1,"kind":"decision","time":"2026-11-14T12:00:00Z","client":"acme","outcome":"allowed","estimate":"0.0125","wait":"1.5s","pools":[{"pool":"gpt","units":1000}]}`

func TestParse(t *testing.T) {
	tests := map[string]struct {
		in      string
		wantErr []string // each must appear in the error
		check   func(t *testing.T, lg *Log)
	}{
		"a decision, a settle and a start": {
			in: `{"v":1,"kind":"start","time":"2026-11-14T12:00:00Z","policy":"p.yaml","settlement":"immediate"}` + "\n" + goodDecision + "\n" +
				`{"v":1,"kind":"settle","time":"2026-11-14T12:00:01Z","reservation":"r1","outcome":"settled","actual":"0.000000001"}`,
			check: func(t *testing.T, lg *Log) {
				assert.Equal(t, "p.yaml", lg.Policy)
				assert.Equal(t, "immediate", lg.Settlement)
				require.Len(t, lg.Entries, 2)
				assert.Equal(t, policy.Money(12_500_000), lg.Entries[0].Estimate)
				assert.Equal(t, 2, lg.Entries[0].N)
				assert.Equal(t, "1.5s", lg.Entries[0].Wait.String())
				assert.Equal(t, policy.Money(1), lg.Entries[1].Actual)
			},
		},
		"unknown fields and kinds are tolerated": {
			in: `{"v":1,"kind":"decision","time":"2026-11-14T12:00:00Z","outcome":"denied","future_field":{"x":[1,2]}}` + "\n" +
				`{"v":1,"kind":"heartbeat","time":"2026-11-14T12:00:00Z"}` + "\n\n",
			check: func(t *testing.T, lg *Log) {
				assert.Len(t, lg.Entries, 1)
				assert.Equal(t, 1, lg.Skipped)
			},
		},
		"malformed lines are named by number": {
			in: goodDecision + "\n" + `not json` + "\n" + goodDecision + "\n" +
				`{"v":1,"kind":"decision","time":"2026-11-14T12:00:00Z","outcome":"allowed","estimate":"0.0000000001"}` + "\n" +
				`{"v":2,"kind":"decision","time":"2026-11-14T12:00:00Z"}` + "\n" +
				`{"v":1,"kind":"settle","time":"2026-11-14T12:00:00Z","reservation":"r","outcome":"expired"}` + "\n" +
				`{"v":1,"kind":"decision","time":"2026-11-14T12:00:00Z","outcome":"allowed","wait":"-1s"}` + "\n" +
				`{"v":1,"time":"2026-11-14T12:00:00Z"}` + "\n" +
				`{"v":1,"kind":"decision","outcome":"allowed"}` + "\n" +
				`{"v":1,"kind":"decision","time":"2026-11-14T12:00:00Z","outcome":"allowed","input_tokens":-5}` + "\n" +
				`{"v":1,"kind":"start","time":"2026-11-14T12:00:00Z","settlement":"later"}`,
			wantErr: []string{"line 2: not a JSON object", "line 4: estimate", "line 5: format version 2",
				"line 6: settle outcome", "line 7: wait", "line 8: \"kind\" is missing", "line 9: \"time\" is missing",
				"line 10: a negative token count", "line 11: settlement"},
		},
		"a line past the bound": {
			in:      goodDecision + "\n" + `{"v":1,"x":"` + strings.Repeat("a", MaxLineBytes) + `"}`,
			wantErr: []string{"line 2:"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			lg, err := Parse(strings.NewReader(tc.in))
			if len(tc.wantErr) > 0 {
				require.Error(t, err)
				for _, w := range tc.wantErr {
					assert.Contains(t, err.Error(), w)
				}
				return
			}
			require.NoError(t, err)
			tc.check(t, lg)
		})
	}
}

// FuzzDecisionLog: any input parses or fails with an error naming a line;
// never a panic; what parses has no negative amount, and a short log that
// parses replays (under policy A) without error.
func FuzzDecisionLog(f *testing.F) {
	set := compileSet(f, "a.yaml", policyA)
	f.Add(`{"v":1,"kind":"decision","time":"2026-11-14T12:00:09Z","request_id":"5","reservation":"r5","client":"bigco","route":"openai","class":"batch","provider":"openai","host":"api.openai.com","path":"/v1/chat/completions","method":"POST","outcome":"allowed","allowed":true,"held":true,"wait":"8.5s","model":"gpt-4o","input_tokens":10,"output_tokens":990}
{"v":1,"kind":"settle","time":"2026-11-14T12:00:10Z","reservation":"r5","outcome":"settled","actual":"0.005025","input_tokens":10,"output_tokens":500}`)
	f.Add(goodDecision)
	f.Add(`{"v":1,"kind":"start","time":"2026-11-14T12:00:00Z","policy":"p.yaml"}`)
	f.Add(`{"v":1,"kind":"settle","time":"2026-11-14T12:00:01Z","reservation":"r1","outcome":"settled","actual":"1e3"}`)
	f.Add("not json\n{}\n")
	f.Add(`{"v":1,"kind":"decision","time":"2026-11-14T12:00:00Z","outcome":"allowed","estimate":"-1","wait":"99999999999h"}`)
	f.Fuzz(func(t *testing.T, in string) {
		lg, err := Parse(strings.NewReader(in))
		if err != nil {
			require.Contains(t, err.Error(), "line ")
			return
		}
		for _, e := range lg.Entries {
			require.GreaterOrEqual(t, e.Estimate, policy.Money(0))
			require.GreaterOrEqual(t, e.Actual, policy.Money(0))
			require.GreaterOrEqual(t, e.Wait, e.Wait*0)
			require.Positive(t, e.N)
		}
		if len(lg.Entries) <= 8 {
			_, err := Replay(context.Background(), lg, set)
			require.NoError(t, err)
		}
	})
}
