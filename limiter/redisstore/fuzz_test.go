package redisstore

// Fuzzing of the two parsers of script replies: decodeDecision (reserve.lua)
// and parseRecord (the "outcome estimated spent" record of finish). A reply
// comes from a server the store does not control (another version of the
// scripts, a proxy, a bug): whatever it holds, the store must answer with an
// error or a well-formed value, never a panic.

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// LiveClient returns a client of the package's redis-server. The external
// test package, which owns TestMain and the server, sets it in its init; the
// fuzzers record their seed replies from that server.
var LiveClient func(tb testing.TB) redis.UniversalClient

// Fuzz input: shape picks the Request (bits 0-1: takes, bits 2-3: budgets,
// bit 4: a hold; no hold means no budgets), and data is the reply, a
// sequence of values, each a tag byte (mod 8) and its payload:
//
//	0 int64, 8 bytes big-endian   4 nested array: a count byte (mod 8), then values
//	1 int64 from one signed byte  5 decimal string of one signed byte
//	2 string: a length byte (mod 32), then bytes
//	3 nil                         6 bool   7 float64, 8 bytes
//
// Missing bytes read as zero. Arrays nest at most 3 deep.
const (
	tagInt = iota
	tagSmall
	tagString
	tagNil
	tagArray
	tagDecimal
	tagBool
	tagFloat
)

// fuzzRequest builds the Request that shape describes.
func fuzzRequest(shape byte) limiter.Request {
	var req limiter.Request
	for i := range int(shape & 3) {
		req.Takes = append(req.Takes, limiter.Take{
			Key:   limiter.Key{Pool: "p", Client: strconv.Itoa(i)},
			Limit: limiter.Limit{Capacity: 10, Refill: 1}, Cost: 1,
		})
	}
	if shape&16 != 0 {
		req.Hold = &limiter.Hold{ID: "h", TTL: time.Minute, Period: "2026-01", Cost: 5}
		for j := range int(shape >> 2 & 3) {
			req.Hold.Budgets = append(req.Hold.Budgets, limiter.Budget{Owner: "o" + strconv.Itoa(j), Limit: 100})
		}
	}
	return req
}

// shapeOf is fuzzRequest's inverse, for seeds.
func shapeOf(req limiter.Request) byte {
	s := byte(len(req.Takes))
	if req.Hold != nil {
		s |= byte(len(req.Hold.Budgets))<<2 | 16
	}
	return s
}

type byteReader struct{ b []byte }

func (r *byteReader) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *byteReader) bytes(n int) []byte {
	out := make([]byte, n)
	k := copy(out, r.b)
	r.b = r.b[k:]
	return out
}

func (r *byteReader) value(depth int) any {
	switch tag := r.byte() % 8; tag {
	case tagInt:
		return int64(binary.BigEndian.Uint64(r.bytes(8)))
	case tagSmall:
		return int64(int8(r.byte()))
	case tagString:
		return string(r.bytes(int(r.byte() % 32)))
	case tagArray:
		n := int(r.byte() % 8)
		if depth >= 3 {
			return []any{}
		}
		out := make([]any, 0, n)
		for range n {
			out = append(out, r.value(depth+1))
		}
		return out
	case tagDecimal:
		return strconv.Itoa(int(int8(r.byte())))
	case tagBool:
		return r.byte()&1 == 1
	case tagFloat:
		return math.Float64frombits(binary.BigEndian.Uint64(r.bytes(8)))
	default:
		return nil
	}
}

// decodeValues reads a reply from fuzz bytes.
func decodeValues(data []byte) []any {
	r := &byteReader{b: data}
	var out []any
	for len(r.b) > 0 {
		out = append(out, r.value(0))
	}
	return out
}

// encodeValues writes a reply as fuzz bytes (for seeds).
func encodeValues(vs []any) []byte {
	var b []byte
	for _, v := range vs {
		switch x := v.(type) {
		case int64:
			b = append(b, tagInt)
			b = binary.BigEndian.AppendUint64(b, uint64(x))
		case string:
			if len(x) >= 32 {
				panic(fmt.Sprintf("seed string %q too long", x))
			}
			b = append(b, tagString, byte(len(x)))
			b = append(b, x...)
		case nil:
			b = append(b, tagNil)
		case []any:
			b = append(b, tagArray, byte(len(x)))
			b = append(b, encodeValues(x)...)
		case bool:
			b = append(b, tagBool, 0)
			if x {
				b[len(b)-1] = 1
			}
		case float64:
			b = append(b, tagFloat)
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(x))
		default:
			panic(fmt.Sprintf("seed value %T", v))
		}
	}
	return b
}

func TestFuzzEncoding(t *testing.T) {
	for name, vs := range map[string][]any{
		"empty":   nil,
		"scalars": {int64(-1), int64(math.MaxInt64), "rate_limited", nil, true, 1.5},
		"nested":  {[]any{int64(1), []any{"x", nil}}, int64(0)},
	} {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, vs, decodeValues(encodeValues(vs)))
		})
	}
	for shape := range byte(32) {
		req := fuzzRequest(shape)
		if req.Hold == nil {
			shape &^= 0b1100 // budgets need a hold
		}
		assert.Equal(t, shape, shapeOf(req))
	}
}

// replyRecorder keeps the raw replies of the scripts a client runs.
type replyRecorder struct {
	mu      sync.Mutex
	replies [][]any
}

func (r *replyRecorder) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *replyRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if c, ok := cmd.(*redis.Cmd); ok && err == nil {
			if v, ok := c.Val().([]any); ok {
				r.mu.Lock()
				r.replies = append(r.replies, v)
				r.mu.Unlock()
			}
		}
		return err
	}
}

func (r *replyRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (r *replyRecorder) last() []any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.replies[len(r.replies)-1]
}

// liveReplies runs admissions of every shape and outcome against the
// package's redis-server and returns each request with the raw reply
// reserve.lua gave it.
func liveReplies(tb testing.TB) (reqs []limiter.Request, replies [][]any) {
	tb.Helper()
	require.NotNil(tb, LiveClient, "the external test package sets LiveClient")
	c := LiveClient(tb)
	rec := &replyRecorder{}
	c.AddHook(rec)
	s, err := New(c, Config{Prefix: redistest.Prefix(tb)})
	require.NoError(tb, err)

	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	take := func(client string, capacity, cost int64, shadow bool) limiter.Take {
		return limiter.Take{Key: limiter.Key{Pool: "chat", Client: client},
			Limit: limiter.Limit{Capacity: capacity, Refill: 2}, Cost: cost, Shadow: shadow}
	}
	n := 0
	hold := func(cost policy.Money, slotMax int64, limits ...policy.Money) *limiter.Hold {
		n++
		h := &limiter.Hold{ID: "seed" + strconv.Itoa(n), TTL: time.Minute, Period: "2026-01", Cost: cost}
		for j, l := range limits {
			h.Budgets = append(h.Budgets, limiter.Budget{Owner: "owner" + strconv.Itoa(j), Limit: l})
		}
		if slotMax >= 0 {
			h.Slot = &limiter.Slot{Client: "owner0", Max: slotMax}
		}
		return h
	}
	for _, req := range []limiter.Request{
		{}, // nothing asked
		{Takes: []limiter.Take{take("", 10, 3, false)}},                                                // granted
		{Takes: []limiter.Take{take("", 10, 3, false), take("a", 5, 5, false)}},                        // granted, drains a
		{Takes: []limiter.Take{take("", 10, 3, false), take("a", 5, 1, false)}},                        // rate limited
		{Takes: []limiter.Take{take("b", 5, 9, false)}},                                                // exceeds capacity
		{Takes: []limiter.Take{take("", 10, 1, false), take("a", 5, 2, true), take("c", 5, 1, false)}}, // shadow short
		{Takes: []limiter.Take{take("d", 5, 1, false)}, Hold: hold(100, 2, 1000)},                      // held, slot
		{Hold: hold(700, -1, 1000, limiter.Unlimited)},                                                 // held
		{Takes: []limiter.Take{take("d", 5, 1, false)}, Hold: hold(900, 2, 1000, 5000)},                // budget exceeded
		{Hold: hold(1, 1, 1000, 5000, 9000)},                                                           // concurrency
		{Takes: []limiter.Take{take("e", 5, 1, false)}, Hold: &limiter.Hold{Period: "2026-01", Cost: 10, Commit: true,
			Budgets: []limiter.Budget{{Owner: "x", Limit: 100}}}}, // committed at once
	} {
		req.Now = now
		_, err := s.Reserve(context.Background(), req)
		require.NoError(tb, err)
		reqs, replies = append(reqs, req), append(replies, rec.last())
	}
	return reqs, replies
}

// TestLiveRepliesDecode checks the recorded seeds are the replies the
// decoder accepts, so the fuzzer starts from the real format.
func TestLiveRepliesDecode(t *testing.T) {
	reqs, replies := liveReplies(t)
	reasons := map[limiter.Reason]bool{}
	for i, req := range reqs {
		d, err := decodeDecision(replies[i], req)
		require.NoError(t, err, "reply %d: %v", i, replies[i])
		reasons[d.Reason] = true
		// The fuzz encoding carries the reply unchanged.
		assert.Equal(t, replies[i], decodeValues(encodeValues(replies[i])))
		assert.Equal(t, req.Hold == nil, fuzzRequest(shapeOf(req)).Hold == nil)
	}
	assert.Equal(t, map[limiter.Reason]bool{
		limiter.ReasonNone: true, limiter.ReasonRateLimited: true, limiter.ReasonExceedsCapacity: true,
		limiter.ReasonBudgetExceeded: true, limiter.ReasonConcurrency: true,
	}, reasons, "the seeds cover every outcome")
}

func FuzzDecodeDecision(f *testing.F) {
	reqs, replies := liveReplies(f)
	for i, req := range reqs {
		f.Add(shapeOf(req), encodeValues(replies[i]))
	}
	// Hand-written replies a broken server might send.
	one := fuzzRequest(1)
	good := []any{int64(1), "", int64(-1), int64(0), int64(-1), int64(0), int64(1), int64(9), int64(1000000), int64(0), int64(0)}
	with := func(i int, v any) []any { r := append([]any(nil), good...); r[i] = v; return r }
	for _, r := range [][]any{
		good,
		good[:10],                        // one value short
		append(good, int64(0)),           // one too many
		with(0, nil),                     // nil where a number belongs
		with(1, int64(0)),                // a number for the reason
		with(2, int64(1)),                // blocking past the buckets
		with(2, int64(-2)),               // blocking below -1
		with(4, int64(0)),                // budget blocking without budgets
		with(3, "12"),                    // a number as a string (RESP2 proxies)
		with(3, "x"),                     // not a number
		with(7, []any{int64(1)}),         // an array in a scalar's place
		with(5, float64(1)),              // a RESP3 double
		with(0, true),                    // a RESP3 boolean
		{"ERR", "something"},             // an error as data
		{[]any{good}},                    // the reply wrapped once more
		with(3, strings.Repeat("9", 31)), // overflows int64
	} {
		f.Add(shapeOf(one), encodeValues(r))
	}

	f.Fuzz(func(t *testing.T, shape byte, data []byte) {
		req := fuzzRequest(shape)
		res := decodeValues(data)
		d, err := decodeDecision(res, req)
		if err != nil {
			return
		}
		nbud := 0
		if req.Hold != nil {
			nbud = len(req.Hold.Budgets)
		}
		require.Len(t, d.Buckets, len(req.Takes))
		require.Len(t, d.Budgets, nbud)
		require.GreaterOrEqual(t, d.Blocking, -1)
		require.Less(t, d.Blocking, len(req.Takes))
		require.GreaterOrEqual(t, d.BudgetBlocking, -1)
		require.Less(t, d.BudgetBlocking, nbud)
		for i, b := range d.Buckets {
			require.Equal(t, req.Takes[i].Key, b.Key, "bucket %d", i)
			require.Equal(t, req.Takes[i].Limit, b.Limit, "bucket %d", i)
		}
		for j, b := range d.Budgets {
			require.Equal(t, req.Hold.Budgets[j].Owner, b.Owner, "budget %d", j)
			require.Equal(t, req.Hold.Budgets[j].Limit, b.Limit, "budget %d", j)
		}
	})
}

// TestDecodeDecision pins the decoder on replies of the right and the wrong
// shape.
func TestDecodeDecision(t *testing.T) {
	req := fuzzRequest(1 | 1<<2 | 16)                                                             // one take, a hold with one budget
	good := []any{int64(0), "budget_exceeded", int64(-1), int64(0), int64(0), int64(1), int64(2), // 2 lapsed holds committed
		int64(4), int64(3000000), int64(0), int64(0), // the bucket
		int64(90), int64(20), int64(1)} // the budget
	with := func(i int, v any) []any { r := append([]any(nil), good...); r[i] = v; return r }
	tests := map[string]struct {
		reply   []any
		want    limiter.Decision
		wantErr string
	}{
		"budget exceeded": {reply: good, want: limiter.Decision{
			Reason: limiter.ReasonBudgetExceeded, Blocking: -1, BudgetBlocking: 0, InFlight: 1, Expired: 2,
			Buckets: []limiter.BucketState{{Key: req.Takes[0].Key, Limit: req.Takes[0].Limit, Remaining: 4, ResetAfter: 3 * time.Second}},
			Budgets: []limiter.BudgetState{{Owner: "o0", Limit: 100, Spent: 90, Reserved: 20, Short: true}},
		}},
		"integers as strings": {reply: with(11, "90"), want: limiter.Decision{
			Reason: limiter.ReasonBudgetExceeded, Blocking: -1, BudgetBlocking: 0, InFlight: 1, Expired: 2,
			Buckets: []limiter.BucketState{{Key: req.Takes[0].Key, Limit: req.Takes[0].Limit, Remaining: 4, ResetAfter: 3 * time.Second}},
			Budgets: []limiter.BudgetState{{Owner: "o0", Limit: 100, Spent: 90, Reserved: 20, Short: true}},
		}},
		"too short":             {reply: good[:13], wantErr: "13 values, want 14"},
		"too long":              {reply: append(with(0, int64(0)), nil), wantErr: "15 values, want 14"},
		"nil":                   {reply: with(8, nil), wantErr: "value 8 is <nil>"},
		"not a number":          {reply: with(3, "soon"), wantErr: "value 3 is string"},
		"reason not a string":   {reply: with(1, int64(3)), wantErr: "value 1 is int64"},
		"blocking out of range": {reply: with(2, int64(1)), wantErr: "index out of range"},
		"budget index too big":  {reply: with(4, int64(1)), wantErr: "index out of range"},
		"budget index too low":  {reply: with(4, int64(-2)), wantErr: "index out of range"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d, err := decodeDecision(tc.reply, req)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, d)
		})
	}
}

func FuzzParseRecord(f *testing.F) {
	for _, rec := range []string{
		"settled 2500 1000", "released 2500 0", "expired 2500 2500", // as finish writes them
		"settled 9007199254740991 0", "settled 0 9223372036854775807",
		"", "settled", "settled 1", "settled 1 2 3", "settled x 1", "settled 1 y",
		"settled  1\t2", " settled 1 2 ", "settled -1 -2", "settled 99999999999999999999 1",
		"settled\u00a01 2", "settled +1 0x2",
	} {
		f.Add(rec)
	}
	f.Fuzz(func(t *testing.T, rec string) {
		var r reply
		st := parseRecord("id", rec, &r)
		if r.err != nil {
			return
		}
		f := strings.Fields(rec)
		require.Len(t, f, 3)
		require.Equal(t, "id", st.ID)
		require.Equal(t, limiter.Outcome(f[0]), st.Outcome)
		require.NotEmpty(t, st.Outcome)
		require.False(t, st.Repeat)
		// What parses, prints back to a record that parses the same.
		var again reply
		require.Equal(t, st, parseRecord("id", fmt.Sprintf("%s %d %d", st.Outcome, st.Estimated, st.Spent), &again))
		require.NoError(t, again.err)
	})
}

func TestParseRecord(t *testing.T) {
	tests := map[string]struct {
		rec     string
		want    limiter.Settlement
		wantErr string
	}{
		"settled":      {rec: "settled 2500 1000", want: limiter.Settlement{ID: "id", Outcome: limiter.OutcomeSettled, Estimated: 2500, Spent: 1000}},
		"released":     {rec: "released 2500 0", want: limiter.Settlement{ID: "id", Outcome: limiter.OutcomeReleased, Estimated: 2500}},
		"expired":      {rec: "expired 7 7", want: limiter.Settlement{ID: "id", Outcome: limiter.OutcomeExpired, Estimated: 7, Spent: 7}},
		"empty":        {rec: "", wantErr: "malformed"},
		"two fields":   {rec: "settled 1", wantErr: "malformed"},
		"four fields":  {rec: "settled 1 2 3", wantErr: "malformed"},
		"not a number": {rec: "settled x 1", wantErr: "invalid syntax"},
		"overflow":     {rec: "settled 1 99999999999999999999", wantErr: "out of range"},
		"both bad":     {rec: "settled x y", wantErr: `"x"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var r reply
			st := parseRecord("id", tc.rec, &r)
			if tc.wantErr != "" {
				require.Error(t, r.err)
				assert.Contains(t, r.err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, r.err)
			assert.Equal(t, tc.want, st)
		})
	}
}

// TestDecodeAdjust pins adjust.lua's reply decoder on replies of the right
// and the wrong shape (it shares reply with decodeDecision, fuzzed above).
func TestDecodeAdjust(t *testing.T) {
	adj := []limiter.Adjustment{
		{Key: limiter.Key{Pool: "p"}, Limit: limiter.Limit{Capacity: 10, Refill: 1}, Cap: limiter.NoCap},
		{Key: limiter.Key{Pool: "p", Client: "c"}, Limit: limiter.Limit{Capacity: 5, Refill: 1}, Cap: 2},
	}
	good := []any{int64(7), int64(3000000), "2", int64(3000000)}
	tests := map[string]struct {
		reply   []any
		want    []limiter.BucketState
		wantErr string
	}{
		"good": {reply: good, want: []limiter.BucketState{
			{Key: adj[0].Key, Limit: adj[0].Limit, Remaining: 7, ResetAfter: 3 * time.Second},
			{Key: adj[1].Key, Limit: adj[1].Limit, Remaining: 2, ResetAfter: 3 * time.Second},
		}},
		"short":        {reply: good[:3], wantErr: "3 values, want 4"},
		"long":         {reply: append(append([]any(nil), good...), int64(1)), wantErr: "5 values, want 4"},
		"nil":          {reply: []any{nil, int64(1), int64(1), int64(1)}, wantErr: "value 0 is <nil>"},
		"not a number": {reply: []any{int64(1), "x", int64(1), int64(1)}, wantErr: "value 1 is string"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := decodeAdjust(tc.reply, adj)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestDecodeLease pins lease.lua's reply decoder.
func TestDecodeLease(t *testing.T) {
	asks := []limiter.LeaseAsk{{Key: limiter.Key{Pool: "p"}, Limit: limiter.Limit{Capacity: 10, Refill: 1}, Want: 5, Need: 1}}
	good := []any{int64(5), int64(3), int64(7000000), int64(0), int64(1)}
	g, err := decodeLease(good, asks)
	require.NoError(t, err)
	assert.Equal(t, []limiter.LeaseGrant{{Granted: 5, Remaining: 3, ResetAfter: 7 * time.Second, Possible: true}}, g)
	for name, reply := range map[string][]any{
		"short":          good[:4],
		"over the want":  {int64(6), int64(3), int64(0), int64(0), int64(1)},
		"negative grant": {int64(-1), int64(3), int64(0), int64(0), int64(1)},
		"not a number":   {"x", int64(3), int64(0), int64(0), int64(1)},
	} {
		_, err := decodeLease(reply, asks)
		assert.Error(t, err, name)
	}
}
