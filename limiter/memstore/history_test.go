package memstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/tollgate/tollgate/limiter"
)

// TestHistoryRetention: a client's month is forgotten once its retention
// has passed since its last booking, found by a sweep that runs at most
// once a historySweep (not on every call: that walked every client's
// months under the ledger's lock and cost a tenth of a whole call's CPU);
// a month booked since is kept.
func TestHistoryRetention(t *testing.T) {
	h := newHistory(1, time.Hour)
	keep := limiter.HistoryTTL(1).Microseconds()
	settled := limiter.Settlement{Outcome: limiter.OutcomeSettled, Spent: 5}
	book := func(client, month string, at int64) {
		h.book(&limiter.CallRecord{RequestID: fmt.Sprint(client, month, at), Client: client, Month: month, Route: "r", Model: "m"}, settled, at)
	}
	book("acme", "2026-01", 1)
	book("bigco", "2026-01", 1)
	book("acme", "2026-02", keep/2) // acme's February is recent at the end
	assert.Len(t, h.rows, 3)

	book("bigco", "2026-03", keep+2)
	assert.Len(t, h.rows, 2, "January (acme's and bigco's) past its retention is forgotten")
	assert.Contains(t, h.rows, histKey{"acme", "2026-02", "r", "m"})
	assert.Contains(t, h.rows, histKey{"bigco", "2026-03", "r", "m"})

	sweep := keep/2 + keep // February's last booking + its retention: not past it yet
	book("bigco", "2026-03", sweep)
	assert.Contains(t, h.rows, histKey{"acme", "2026-02", "r", "m"}, "at its retention, not past it")
	book("bigco", "2026-03", sweep+1)
	assert.Contains(t, h.rows, histKey{"acme", "2026-02", "r", "m"}, "past it, but within historySweep of the last sweep nothing is looked for")
	book("bigco", "2026-03", sweep+historySweep.Microseconds())
	assert.NotContains(t, h.rows, histKey{"acme", "2026-02", "r", "m"}, "the next sweep forgets it")
	assert.Contains(t, h.rows, histKey{"bigco", "2026-03", "r", "m"})
}

// BenchmarkHistoryBook: booking a settled call among 1,000 clients' months
// with a cost record; the months' sweep is not paid per call.
func BenchmarkHistoryBook(b *testing.B) {
	h := newHistory(13, time.Hour)
	settled := limiter.Settlement{Outcome: limiter.OutcomeSettled, Spent: 5}
	recs := make([]limiter.CallRecord, 1000)
	for i := range recs {
		recs[i] = limiter.CallRecord{Client: fmt.Sprint("client-", i), Month: "2026-01", Route: "openai", Model: "gpt-4o-mini"}
	}
	ids := make([]string, 4096)
	for i := range ids {
		ids[i] = fmt.Sprint("req-", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		r := recs[i%len(recs)]
		r.RequestID = ids[i%len(ids)]
		h.book(&r, settled, int64(i))
	}
}
