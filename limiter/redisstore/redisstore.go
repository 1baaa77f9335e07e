// Package redisstore is the Redis limiter.Backend: the source of truth that
// every sidecar of a fleet shares. Every change is one Lua script (embedded,
// run by EVALSHA with a transparent EVAL on NOSCRIPT) that reads its time from
// Redis's TIME unless the caller passes one, so sidecars' clocks never
// matter. Every script's keys share one hash tag, so each runs on Redis
// Cluster in one slot: by default the prefix's, one slot for everything;
// with Config.Spread a tenant's or a shared pool's (layout.go).
package redisstore

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

var (
	_ limiter.Backend    = (*Store)(nil)
	_ limiter.Adjuster   = (*Store)(nil)
	_ limiter.Finisher   = (*Store)(nil)
	_ limiter.Leaser     = (*Store)(nil)
	_ limiter.SlotLeaser = (*Store)(nil)
	_ limiter.Booker     = (*Store)(nil)
)

var (
	//go:embed common.lua
	commonLua string
	//go:embed reserve.lua
	reserveLua string
	//go:embed finish.lua
	finishLua string
	//go:embed expire.lua
	expireLua string
	//go:embed usage.lua
	usageLua string
	//go:embed adjust.lua
	adjustLua string
	//go:embed lease.lua
	leaseLua string
	//go:embed slots.lua
	slotsLua string
	//go:embed record.lua
	recordLua string
	//go:embed book.lua
	bookLua string

	defaultScripts = newScripts(commonLua)
)

// scripts are the Lua scripts of one Store, each prepended with common.lua
// (whose DONE_TTL follows Config.DoneRetention).
type scripts struct {
	reserve, peek, finish, expire, usage, adjust, lease, slots, book, record *redis.Script
	finishBatch                                                              *redis.Script // batch.go
}

// peekFlags makes the peek script read-only in Redis's own eyes: a write
// there fails instead of happening (and the script may run on a replica).
const peekFlags = "#!lua flags=no-writes\n"

func newScripts(common string) scripts {
	return scripts{
		reserve: redis.NewScript(common + "local PEEK = false\n" + reserveLua),
		peek:    redis.NewScript(peekFlags + common + "local PEEK = true\n" + reserveLua),
		finish:  redis.NewScript(common + finishLua),
		expire:  redis.NewScript(common + expireLua),
		usage:   redis.NewScript(common + usageLua),
		adjust:  redis.NewScript(common + adjustLua),
		lease:   redis.NewScript(common + leaseLua),
		slots:   redis.NewScript(common + slotsLua),
		book:    redis.NewScript(common + bookLua),
		record:  redis.NewScript(common + recordLua),

		finishBatch: redis.NewScript(common + finishBatchLua),
	}
}

func (sc scripts) byName() map[string]*redis.Script {
	return map[string]*redis.Script{"reserve": sc.reserve, "peek": sc.peek, "finish": sc.finish, "expire": sc.expire, "usage": sc.usage,
		"adjust": sc.adjust, "lease": sc.lease, "slots": sc.slots, "book": sc.book, "record": sc.record, "finish_batch": sc.finishBatch}
}

// Scripts lists the embedded scripts (with the default retention), for
// loading ahead of use.
var Scripts = defaultScripts.byName()

// Retention of ended reservations' outcomes (and booked batch ids): long
// enough for a late settle to be recognised, never unbounded.
const (
	DefaultDoneRetention = 24 * time.Hour
	MaxDoneRetention     = 7 * 24 * time.Hour
)

// doneTTLLine is the line of common.lua that Config.DoneRetention replaces.
const doneTTLLine = "local DONE_TTL = 86400 "

// Config configures a Store.
type Config struct {
	// Prefix starts every key and is their hash tag ("{tollgate}:…"), so
	// one prefix lives in one Redis Cluster slot. Fleets that must not
	// share state use distinct prefixes.
	Prefix string
	// Spread puts each tenant's keys and each shared pool's buckets under
	// a hash tag of their own, so that a Redis Cluster spreads a fleet over
	// its masters (layout.go, docs/redis.md). Off: one tag, one slot, every
	// call one script.
	Spread bool
	// Tenant names the tenant of a client or budget owner, with Spread:
	// the root of its budget chain, so that a call's budgets, client
	// buckets and reservation share a slot. Nil: every owner is a tenant
	// of its own (budget chains of more than one owner are refused).
	Tenant func(owner string) string
	// DoneRetention is how long the outcome of an ended reservation (a key
	// per call) is kept, so a repeated settle is recognised; a settle
	// later than that finds no reservation. Zero means
	// DefaultDoneRetention; whole seconds, at most MaxDoneRetention.
	DoneRetention time.Duration
	// HistoryMonths is how many months a client's history is kept after
	// its last booking (0: limiter.DefaultHistoryMonths); CostTTL how long
	// a call's cost record is kept (0: limiter.DefaultCostTTL).
	HistoryMonths int
	CostTTL       time.Duration
}

// DefaultConfig returns the prefix "tollgate" and a day's retention.
func DefaultConfig() Config { return Config{Prefix: "tollgate", DoneRetention: DefaultDoneRetention} }

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	var errs []error
	if c.Prefix == "" || strings.ContainsAny(c.Prefix, "{}\n ") {
		errs = append(errs, fmt.Errorf("redisstore: prefix %q must be non-empty, without braces, spaces or newlines", c.Prefix))
	}
	if c.DoneRetention != 0 && (c.DoneRetention < time.Second || c.DoneRetention > MaxDoneRetention || c.DoneRetention%time.Second != 0) {
		errs = append(errs, fmt.Errorf("redisstore: retention of ended reservations %v must be whole seconds from 1s to %v", c.DoneRetention, MaxDoneRetention))
	}
	if err := limiter.ValidateRetention(c.HistoryMonths, c.CostTTL); err != nil {
		errs = append(errs, fmt.Errorf("redisstore: %w", err))
	}
	return errors.Join(errs...)
}

// Store is the Redis Backend. It does not own the client; the caller closes
// it (Close is a no-op kept for the interface).
type Store struct {
	c      redis.UniversalClient
	p      string // "{prefix}:"
	prefix string
	sc     scripts

	// Spread (layout.go).
	spread  bool
	tenant  func(string) string
	doneTTL time.Duration
	lost    atomic.Int64            // pool refunds that failed
	hook    func(step string) error // tests: a fault between steps

	histTTL, costTTL time.Duration // retention of history and cost records
}

// New returns a Store using client c.
func New(c redis.UniversalClient, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if c == nil {
		return nil, errors.New("redisstore: nil client")
	}
	sc := defaultScripts
	if r := cfg.DoneRetention; r != 0 && r != DefaultDoneRetention {
		sc = newScripts(strings.Replace(commonLua, doneTTLLine, fmt.Sprintf("local DONE_TTL = %d ", int64(r/time.Second)), 1))
	}
	done := cfg.DoneRetention
	if done == 0 {
		done = DefaultDoneRetention
	}
	months, costTTL := cfg.HistoryMonths, cfg.CostTTL
	if months == 0 {
		months = limiter.DefaultHistoryMonths
	}
	if costTTL == 0 {
		costTTL = limiter.DefaultCostTTL
	}
	return &Store{c: c, p: "{" + cfg.Prefix + "}:", prefix: cfg.Prefix, sc: sc, spread: cfg.Spread, tenant: cfg.Tenant, doneTTL: done,
		histTTL: limiter.HistoryTTL(months), costTTL: costTTL}, nil
}

// Load puts the scripts into Redis's script cache, so the first admission
// does not pay for an EVAL. A failure here is not fatal: scripts also load
// themselves on NOSCRIPT.
func (s *Store) Load(ctx context.Context) error {
	var errs []error
	for name, sc := range s.sc.byName() {
		if err := sc.Load(ctx, s.c).Err(); err != nil {
			errs = append(errs, fmt.Errorf("redisstore: load %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Close does nothing: the client belongs to the caller.
func (s *Store) Close() error { return nil }

func lenPrefixed(s string) string { return strconv.Itoa(len(s)) + ":" + s }

// Key names, each under p, the prefix of the slot the key lives in: the
// store's one prefix, or with Spread a tenant's or a pool's (layout.go, the
// one place that picks it).
func bucketKey(p string, k limiter.Key) string { return p + "k:" + k.String() }
func budgetKey(p, owner, period string) string {
	return p + "b:" + lenPrefixed(owner) + ":" + period
}
func slotKey(p, client string) string   { return p + "c:" + lenPrefixed(client) }
func recordKey(p, id string) string     { return p + "r:" + id }
func doneKey(p, id string) string       { return p + "d:" + id }
func expiryKey(p string) string         { return p + "exp" }
func journalKey(p, batch string) string { return p + "j:" + batch }

func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0 // the script reads Redis TIME
	}
	return t.UnixMicro()
}

// Reserve decides one admission in one script call (with Spread, a
// documented sequence of them when it takes a shared pool: layout.go).
func (s *Store) Reserve(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	if err := ctx.Err(); err != nil {
		return limiter.Decision{}, err
	}
	if err := req.Validate(); err != nil {
		return limiter.Decision{}, err
	}
	if s.spread {
		return s.reserveSpread(ctx, req)
	}
	res, err := s.reserveOn(ctx, s.p, req, false, "")
	if err != nil {
		return limiter.Decision{}, err
	}
	return decodeDecision(res, req)
}

// Peek decides req as Reserve would, read-only: the reserve script in its
// peek mode, flagged no-writes (with Spread, one such call per slot the
// request touches, pipelined, merged as Reserve merges its steps).
func (s *Store) Peek(ctx context.Context, req limiter.Request) (limiter.Decision, error) {
	if err := ctx.Err(); err != nil {
		return limiter.Decision{}, err
	}
	if err := req.Validate(); err != nil {
		return limiter.Decision{}, err
	}
	if s.spread {
		return s.peekSpread(ctx, req)
	}
	keys, args := reserveArgs(s.p, req, false, "")
	res, err := reserveReply(s.sc.peek.Run(ctx, s.c, keys, args...), req)
	if err != nil {
		return limiter.Decision{}, err
	}
	return decodeDecision(res, req)
}

var _ limiter.Peeker = (*Store)(nil)

// reserveOn runs reserve.lua for req on the slot of prefix p. With veto,
// it decides and reports but writes nothing (a shared pool already said
// no); pcharges are the pool charges the record keeps for Finish.
func (s *Store) reserveOn(ctx context.Context, p string, req limiter.Request, veto bool, pcharges string) ([]any, error) {
	keys, args := reserveArgs(p, req, veto, pcharges)
	return reserveReply(s.sc.reserve.Run(ctx, s.c, keys, args...), req)
}

// reserveReply reads reserve.lua's raw reply, naming a duplicate id.
func reserveReply(cmd *redis.Cmd, req limiter.Request) ([]any, error) {
	res, err := cmd.Slice()
	if err != nil {
		if strings.Contains(err.Error(), "DUPLICATE") {
			id := ""
			if req.Hold != nil {
				id = req.Hold.ID
			}
			return nil, fmt.Errorf("%w: %q", limiter.ErrDuplicateReservation, id)
		}
		return nil, fmt.Errorf("redisstore: reserve: %w", err)
	}
	return res, nil
}

// reserveArgs are reserve.lua's keys and arguments for req on the slot of
// prefix p.
func reserveArgs(p string, req limiter.Request, veto bool, pcharges string) ([]string, []any) {
	h := req.Hold
	nb, nbud := len(req.Takes), 0
	if h != nil {
		nbud = len(h.Budgets)
	}
	keys := make([]string, 0, 3+nb+nbud+1)
	args := make([]any, 0, 12+5*nb+nbud)
	keys = append(keys, expiryKey(p))
	hold, id, ttl, cost, period, slotMax := "0", "", int64(0), int64(0), "", int64(-1)
	switch {
	case h != nil && h.Commit:
		keys = append(keys, expiryKey(p), expiryKey(p))
		hold, cost, period = "2", int64(h.Cost), h.Period
	case h != nil:
		keys = append(keys, recordKey(p, h.ID), doneKey(p, h.ID))
		hold, id, ttl, cost, period = "1", h.ID, h.TTL.Microseconds(), int64(h.Cost), h.Period
		if h.Slot != nil {
			slotMax = h.Slot.Max
		}
	default:
		keys = append(keys, expiryKey(p), expiryKey(p))
	}
	for _, t := range req.Takes {
		keys = append(keys, bucketKey(p, t.Key))
	}
	v := "0"
	if veto {
		v = "1"
	}
	args = append(args, micros(req.Now), nb, nbud, hold, id, ttl, cost, period, slotMax, p, v, pcharges)
	for _, t := range req.Takes {
		shadow := 0
		if t.Shadow {
			shadow = 1
		}
		args = append(args, t.Limit.Capacity, t.Limit.Refill, t.Limit.Den(), t.Cost, shadow)
	}
	if h != nil {
		for _, b := range h.Budgets {
			keys = append(keys, budgetKey(p, b.Owner, h.Period))
			args = append(args, int64(b.Limit))
		}
		if h.Slot != nil && !h.Commit {
			keys = append(keys, slotKey(p, h.Slot.Client))
		}
	}
	return keys, args
}

// decodeDecision reads reserve.lua's reply, refusing any reply of the wrong
// shape rather than guessing.
func decodeDecision(res []any, req limiter.Request) (limiter.Decision, error) {
	nb, nbud := len(req.Takes), 0
	if req.Hold != nil {
		nbud = len(req.Hold.Budgets)
	}
	if len(res) != 7+4*nb+3*nbud {
		return limiter.Decision{}, fmt.Errorf("redisstore: reserve replied with %d values, want %d", len(res), 7+4*nb+3*nbud)
	}
	r := reply{v: res}
	d := limiter.Decision{
		Allowed:        r.int(0) == 1,
		Reason:         limiter.Reason(r.str(1)),
		Blocking:       int(r.int(2)),
		RetryAfter:     time.Duration(r.int(3)) * time.Microsecond,
		BudgetBlocking: int(r.int(4)),
		InFlight:       r.int(5),
		Expired:        int(r.int(6)),
		Buckets:        make([]limiter.BucketState, nb),
	}
	for i, t := range req.Takes {
		o := 7 + 4*i
		d.Buckets[i] = limiter.BucketState{
			Key: t.Key, Limit: t.Limit, Remaining: r.int(o),
			ResetAfter: time.Duration(r.int(o+1)) * time.Microsecond,
			Short:      r.int(o+2) == 1, RetryAfter: time.Duration(r.int(o+3)) * time.Microsecond,
		}
	}
	if h := req.Hold; h != nil {
		d.Budgets = make([]limiter.BudgetState, nbud)
		for j, b := range h.Budgets {
			o := 7 + 4*nb + 3*j
			d.Budgets[j] = limiter.BudgetState{Owner: b.Owner, Limit: b.Limit,
				Spent: policy.Money(r.int(o)), Reserved: policy.Money(r.int(o + 1)), Short: r.int(o+2) == 1}
		}
	}
	if d.Blocking >= nb || d.Blocking < -1 || d.BudgetBlocking >= nbud || d.BudgetBlocking < -1 {
		r.err = errors.New("index out of range")
	}
	if r.err != nil {
		return limiter.Decision{}, fmt.Errorf("redisstore: reserve reply: %w", r.err)
	}
	return d, nil
}

// reply reads a script's array reply, remembering the first type error.
type reply struct {
	v   []any
	err error
}

func (r *reply) int(i int) int64 {
	switch x := r.v[i].(type) {
	case int64:
		return x
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		if err == nil {
			return n
		}
	}
	if r.err == nil {
		r.err = fmt.Errorf("value %d is %T %v, want an integer", i, r.v[i], r.v[i])
	}
	return 0
}

func (r *reply) str(i int) string {
	if x, ok := r.v[i].(string); ok {
		return x
	}
	if r.err == nil {
		r.err = fmt.Errorf("value %d is %T, want a string", i, r.v[i])
	}
	return ""
}

// Settle commits the reservation at its actual cost (Finish without
// refunds or throttles).
func (s *Store) Settle(ctx context.Context, id string, actual policy.Money) (limiter.Settlement, error) {
	return s.Finish(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeSettled, Actual: actual})
}

// Release returns the reservation whole (Finish without refunds or
// throttles).
func (s *Store) Release(ctx context.Context, id string) (limiter.Settlement, error) {
	return s.Finish(ctx, limiter.Ending{ID: id, Outcome: limiter.OutcomeReleased})
}

// Finish ends a reservation in one script call: settled or released, its
// slot freed, the buckets it charged refunded from its record in Redis
// (so a sidecar that restarted refunds them too), then the throttles.
// With Spread, the reservation is found first and a shared pool's refunds
// and throttles follow on the pool's slot (layout.go).
func (s *Store) Finish(ctx context.Context, e limiter.Ending) (limiter.Settlement, error) {
	if err := ctx.Err(); err != nil {
		return limiter.Settlement{}, err
	}
	if err := e.Validate(); err != nil {
		return limiter.Settlement{}, err
	}
	if s.spread {
		return s.finishSpread(ctx, e)
	}
	st, _, err := s.finishOn(ctx, s.p, e)
	return st, err
}

// finishOn runs finish.lua on the slot of prefix p; it returns the
// record's pool charges (kept there by a spread Reserve) the first time.
func (s *Store) finishOn(ctx context.Context, p string, e limiter.Ending) (limiter.Settlement, string, error) {
	id, o := e.ID, e.Outcome
	keys := make([]string, 0, 5+len(e.Throttles))
	keys = append(keys, expiryKey(p), recordKey(p, id), doneKey(p, id))
	rec := e.Record
	var histLater *limiter.CallRecord // with Spread: booked after the script
	costLater := false
	if rec != nil && s.spread {
		// The cost record lives in a slot of its own (found by request id
		// alone): written after the finish (costAfter), not by its script;
		// so is the history of a record whose client is of another tenant
		// than the reservation's slot.
		r := *rec
		costLater, r.RequestID = r.RequestID != "", ""
		if s.ownerP(r.Client) != p {
			histLater, rec = &r, nil
		} else {
			rec = &r
		}
	}
	if rec != nil {
		ck := expiryKey(p) // no cost record: a key of this slot, unused
		if rec.RequestID != "" {
			ck = s.costKey(rec.RequestID)
		}
		keys = append(keys, s.historyKey(rec.Client, rec.Month), ck)
	} else {
		keys = append(keys, expiryKey(p), expiryKey(p))
	}
	saved := e.Booked()
	args := make([]any, 0, 8+2*len(e.Used)+5*len(e.Throttles)+2*len(saved))
	args = append(args, p, id, string(o), int64(e.Actual), micros(e.Now), len(e.Used), len(e.Throttles))
	for _, u := range e.Used {
		args = append(args, u.Pool, u.Units)
	}
	for _, t := range e.Throttles {
		keys = append(keys, bucketKey(p, t.Key))
		args = append(args, t.Limit.Capacity, t.Limit.Refill, t.Limit.Den(), t.Cap, t.Pause.Microseconds())
	}
	args = appendSavings(args, saved)
	args = s.appendRecord(args, rec)
	res, err := s.sc.finish.Run(ctx, s.c, keys, args...).Slice()
	if errors.Is(err, redis.Nil) {
		return limiter.Settlement{}, "", fmt.Errorf("%w: %q", limiter.ErrUnknownReservation, id)
	}
	if err != nil {
		return limiter.Settlement{}, "", fmt.Errorf("redisstore: %s %q: %w", o, id, err)
	}
	if len(res) != 3 {
		return limiter.Settlement{}, "", fmt.Errorf("redisstore: %s %q: reply has %d values", o, id, len(res))
	}
	r := reply{v: res}
	st := parseRecord(id, r.str(1), &r)
	st.Repeat = r.int(0) == 1
	pc := r.str(2)
	if r.err != nil {
		return limiter.Settlement{}, "", fmt.Errorf("redisstore: %s %q: %w", o, id, r.err)
	}
	if !st.Repeat {
		if histLater != nil {
			s.historyAfter(ctx, e, st, histLater)
		}
		if costLater {
			s.costAfter(ctx, e, st)
		}
	}
	return st, pc, nil
}

func parseRecord(id, rec string, r *reply) limiter.Settlement {
	f := strings.Fields(rec)
	if len(f) != 3 {
		r.err = fmt.Errorf("ended record %q is malformed", rec)
		return limiter.Settlement{}
	}
	est, err1 := strconv.ParseInt(f[1], 10, 64)
	spent, err2 := strconv.ParseInt(f[2], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		r.err = fmt.Errorf("ended record %q: %w", rec, err)
	}
	return limiter.Settlement{ID: id, Outcome: limiter.Outcome(f[0]), Estimated: policy.Money(est), Spent: policy.Money(spent)}
}

// Expire commits up to max lapsed reservations at their estimate.
func (s *Store) Expire(ctx context.Context, now time.Time, max int) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if max <= 0 {
		return 0, nil // Redis reads LIMIT 0 -1 as no limit at all
	}
	if s.spread {
		return s.expireSpread(ctx, now, max)
	}
	return s.expireOn(ctx, s.p, now, max)
}

// expireOn sweeps the expiry index of prefix p.
func (s *Store) expireOn(ctx context.Context, p string, now time.Time, max int) (int, error) {
	n, err := s.sc.expire.Run(ctx, s.c, []string{expiryKey(p)}, p, micros(now), max).Int()
	if err != nil {
		return 0, fmt.Errorf("redisstore: expire: %w", err)
	}
	return n, nil
}

// Usage reads a budget chain and the owner's slots in use.
func (s *Store) Usage(ctx context.Context, period string, budgets []limiter.Budget, now time.Time) (limiter.Usage, error) {
	if err := ctx.Err(); err != nil {
		return limiter.Usage{}, err
	}
	owner := ""
	if len(budgets) > 0 {
		owner = budgets[0].Owner
	}
	p, err := s.chainP(owner, budgets)
	if err != nil {
		return limiter.Usage{}, err
	}
	keys := make([]string, 0, len(budgets)+2)
	for _, b := range budgets {
		keys = append(keys, budgetKey(p, b.Owner, period))
	}
	keys = append(keys, slotKey(p, owner))
	if len(budgets) > 0 {
		keys = append(keys, savingsKey(p, owner, period))
	}
	res, err := s.sc.usage.Run(ctx, s.c, keys, micros(now), len(budgets)).Slice()
	if err != nil {
		return limiter.Usage{}, fmt.Errorf("redisstore: usage: %w", err)
	}
	if len(res) < 1+2*len(budgets) {
		return limiter.Usage{}, fmt.Errorf("redisstore: usage reply has %d values", len(res))
	}
	r := reply{v: res}
	u := limiter.Usage{InFlight: r.int(0), Budgets: make([]limiter.BudgetState, len(budgets))}
	for j, b := range budgets {
		u.Budgets[j] = limiter.BudgetState{Owner: b.Owner, Limit: b.Limit, Spent: policy.Money(r.int(1 + 2*j)), Reserved: policy.Money(r.int(2 + 2*j))}
	}
	if len(budgets) > 0 {
		u.Savings = decodeSavings(res[1+2*len(budgets):], &r)
	} else if len(res) != 1 {
		r.err = fmt.Errorf("%d values, want 1", len(res))
	}
	if r.err != nil {
		return limiter.Usage{}, fmt.Errorf("redisstore: usage reply: %w", r.err)
	}
	return u, nil
}
