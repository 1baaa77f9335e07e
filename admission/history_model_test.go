package admission

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

// TestCallRecordModel: history rows are kept for months, so the model they
// are booked under is bounded by the policy where the policy prices by
// model: a name priced by its own entry is kept, one priced by the "*"
// catch-all is booked as "*" (a worker cannot grow the rows with every name
// it invents); a route priced by pools keeps the name the call sent.
func TestCallRecordModel(t *testing.T) {
	set := policy.Default()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for name, tc := range map[string]struct {
		est  costing.Estimate
		want string
	}{
		"priced by name":          {est: costing.Estimate{Model: "gpt-4o", PriceEntry: "gpt-4o", ModelKnown: true}, want: "gpt-4o"},
		"priced by a prefix":      {est: costing.Estimate{Model: "gpt-4o-2024-08-06", PriceEntry: "gpt-4o", ModelKnown: true}, want: "gpt-4o-2024-08-06"},
		"priced by the catch-all": {est: costing.Estimate{Model: "made-up-1234", PriceEntry: "*"}, want: "*"},
		"a route priced by pools": {est: costing.Estimate{Model: "whisper-1"}, want: "whisper-1"},
	} {
		t.Run(name, func(t *testing.T) {
			r := callRecord(now, &pendingCall{client: "acme", set: set, est: tc.est}, 1, 1, nil)
			require.NotNil(t, r)
			assert.Equal(t, tc.want, r.Model)
		})
	}
}
