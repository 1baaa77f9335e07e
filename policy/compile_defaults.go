package policy

import (
	"slices"
	"time"
)

// DefaultReservationTTL is how long an admitted call may stay unsettled
// before its reservation is committed at its estimate.
const DefaultReservationTTL = 10 * time.Minute

// defaultsDoc is a defaults: block as written; several files may each
// give some of its settings.
type defaultsDoc struct {
	file                                         string
	line                                         int
	unknownClient, unmatchedRoute, invalidReqest at[string]
	missingClient                                at[string]
	storeUnavailable, timezone, reservationTTL   at[string]
	reservation                                  at[string]
	shadow                                       at[bool]
	adaptive                                     *adaptiveDoc
}

// adaptiveDoc is defaults.adaptive as written.
type adaptiveDoc struct {
	line                                               int
	percentile, minPercent, maxPercent, window, warmup at[int64]
}

// readDefaults reads adaptive first: that order shows in the "allowed:" hint.
func readDefaults(m *mapNode, line int) defaultsDoc {
	var ad *adaptiveDoc
	if a, ok := readBlock(m, "adaptive", readAdaptive); ok {
		ad = &a
	}
	return defaultsDoc{
		adaptive: ad,
		file:     m.d.file, line: line,
		unknownClient:    m.str("unknown_client"),
		missingClient:    m.str("missing_client"),
		unmatchedRoute:   m.str("unmatched_route"),
		invalidReqest:    m.str("invalid_request"),
		shadow:           m.bool("shadow"),
		storeUnavailable: m.str("store_unavailable"),
		timezone:         m.str("timezone"),
		reservationTTL:   m.str("reservation_ttl"),
		reservation:      m.str("reservation"),
	}
}

func readAdaptive(m *mapNode, line int) adaptiveDoc {
	return adaptiveDoc{line: line, percentile: m.int("percentile"), minPercent: m.int("min_percent"),
		maxPercent: m.int("max_percent"), window: m.int("window"), warmup: m.int("min_samples")}
}

// defaults reads the defaults blocks over the built-in answers. Each setting
// may be given once across the files.
func (c *compiler) defaults(docs []defaultsDoc) {
	c.set.Defaults = Defaults{UnmatchedRoute: Allow, InvalidRequest: Deny, MissingClient: Allow, StoreUnavailable: Deny, Location: time.UTC, ReservationTTL: DefaultReservationTTL, Reservation: Conservative,
		Adaptive: DefaultAdaptive()}
	once := newOnceOnly(&c.errList, "defaults")
	for _, d := range docs {
		c.defaultsBlock(d, once)
	}
}

// defaultsBlock compiles one file's defaults block, setting by setting in a
// fixed order (so errors on one line come out in a stable order).
func (c *compiler) defaultsBlock(d defaultsDoc, once *onceOnly) {
	c.defaultAnswers(d, once)
	c.defaultAccounting(d, once)
}

// defaultAnswers compiles what to do with calls the policy does not cover.
func (c *compiler) defaultAnswers(d defaultsDoc, once *onceOnly) {
	out := &c.set.Defaults
	if setOnce(once, d.file, "unknown_client", d.unknownClient) && d.unknownClient.v != string(Deny) {
		c.unknownClient(d.file, d.unknownClient)
	}
	for _, a := range []struct {
		key string
		v   at[string]
		dst *Action
	}{{"unmatched_route", d.unmatchedRoute, &out.UnmatchedRoute}, {"invalid_request", d.invalidReqest, &out.InvalidRequest}, {"missing_client", d.missingClient, &out.MissingClient}} {
		if !setOnce(once, d.file, a.key, a.v) {
			continue
		}
		if act := Action(a.v.v); act == Allow || act == Deny {
			*a.dst = act
		} else {
			c.add(d.file, a.v.line, "defaults."+a.key, "must be \"allow\" or \"deny\", got %q", a.v.v)
		}
	}
	if setOnce(once, d.file, "shadow", d.shadow) {
		out.Shadow = d.shadow.v
	}
	if setOnce(once, d.file, "store_unavailable", d.storeUnavailable) {
		if act := Action(d.storeUnavailable.v); act == Allow || act == Deny {
			out.StoreUnavailable = act
		} else {
			c.add(d.file, d.storeUnavailable.line, "defaults.store_unavailable", "must be \"allow\" (fail open) or \"deny\" (fail closed), got %q", d.storeUnavailable.v)
		}
	}
}

// unknownClient sets the tier a client not listed gets.
func (c *compiler) unknownClient(file string, v at[string]) {
	if t, ok := c.set.Tiers[v.v]; ok {
		c.set.Defaults.UnknownClientTier = t
		return
	}
	c.add(file, v.line, "defaults.unknown_client", "must be a tier name or \"deny\"; tier %q does not exist%s", v.v, known(c.set.Tiers))
}

// defaultAccounting compiles how calls are charged: the budget calendar's
// time zone and how much an admission reserves, and for how long.
func (c *compiler) defaultAccounting(d defaultsDoc, once *onceOnly) {
	out := &c.set.Defaults
	if setOnce(once, d.file, "timezone", d.timezone) {
		if loc, err := time.LoadLocation(d.timezone.v); err != nil || d.timezone.v == "" {
			c.add(d.file, d.timezone.line, "defaults.timezone", "unknown time zone %q (an IANA name such as UTC or America/New_York)", d.timezone.v)
		} else {
			out.Location = loc
		}
	}
	if setOnce(once, d.file, "reservation", d.reservation) {
		if st := Strategy(d.reservation.v); slices.Contains(strategies, st) {
			out.Reservation = st
		} else {
			c.add(d.file, d.reservation.line, "defaults.reservation", "unknown strategy %q (one of %s)", d.reservation.v, joinNames(strategies))
		}
	}
	if a := d.adaptive; a != nil && once.first(d.file, a.line, "adaptive") {
		out.Adaptive = c.adaptive(d.file, a)
	}
	if setOnce(once, d.file, "reservation_ttl", d.reservationTTL) {
		c.reservationTTL(d.file, d.reservationTTL)
	}
}

func (c *compiler) reservationTTL(file string, v at[string]) {
	ttl, err := time.ParseDuration(v.v)
	switch {
	case err != nil:
		c.add(file, v.line, "defaults.reservation_ttl", "must be a duration such as 10m or 90s, got %q", v.v)
	case ttl < time.Second || ttl > 24*time.Hour:
		c.add(file, v.line, "defaults.reservation_ttl", "must be between 1s and 24h, got %v", ttl)
	default:
		c.set.Defaults.ReservationTTL = ttl
	}
}

// adaptive reads defaults.adaptive over DefaultAdaptive.
func (c *compiler) adaptive(file string, a *adaptiveDoc) AdaptiveConfig {
	out := DefaultAdaptive()
	for _, f := range []struct {
		key      string
		v        at[int64]
		dst      *int64
		min, max int64
	}{
		{"percentile", a.percentile, &out.Percentile, 1, 100},
		{"min_percent", a.minPercent, &out.MinPercent, 1, 1000},
		{"max_percent", a.maxPercent, &out.MaxPercent, 1, 1000},
		{"window", a.window, &out.Window, 1, 100_000},
		{"min_samples", a.warmup, &out.MinSamples, 0, 100_000},
	} {
		if !f.v.set {
			continue
		}
		if f.v.v < f.min || f.v.v > f.max {
			c.add(file, f.v.line, "defaults.adaptive."+f.key, "must be between %d and %d, got %d", f.min, f.max, f.v.v)
			continue
		}
		*f.dst = f.v.v
	}
	if out.MinPercent > out.MaxPercent {
		c.add(file, a.line, "defaults.adaptive", "min_percent (%d) is above max_percent (%d)", out.MinPercent, out.MaxPercent)
	}
	if out.MinSamples > out.Window {
		c.add(file, a.line, "defaults.adaptive", "min_samples (%d) is above window (%d): it would never learn", out.MinSamples, out.Window)
	}
	return out
}
