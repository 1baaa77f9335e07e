package authz

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/limiter/queue"
	"github.com/tollgate/tollgate/policy"
)

// Holding: a call that cannot be admitted now, and whose class may wait,
// waits in the line of whatever blocks it (a pool's bucket, its client's
// bucket, its client's concurrency slots) until the line lets it go. The
// queue (limiter/queue) orders and wakes; this file decides who waits, and
// makes each attempt on the waiter's behalf.

// Reasons of the queue's refusals.
const (
	ReasonQueueFull    = "queue_full"
	ReasonQueueTimeout = "queue_timeout"
	ReasonQueueRemoved = "removed_from_queue"
	ReasonOffPeak      = "off_peak"
	ReasonShuttingDown = "shutting_down"
)

// HeaderQueueWait tells the worker how long its call was held (seconds).
const HeaderQueueWait = "x-tollgate-queue-wait"

// deadlineMargin is how long before Envoy's own deadline a held call is
// answered, so that the worker gets Tollgate's 429 rather than Envoy's error.
const deadlineMargin = 50 * time.Millisecond

// attempt is what one try at admission found.
type attempt struct {
	dec limiter.Decision
	err error
}

// bucketLine names the line of a bucket; slotLine the line of a client's
// concurrency slots. Both are parsed back by lineLabel.
func bucketLine(k limiter.Key) string { return "b:" + k.String() }
func slotLine(client string) string   { return "c:" + client }

// lineLabel turns a line's key into its bounded metric label (the pool, or
// "concurrency") and its description for people.
func lineLabel(key string) (pool, desc string) {
	switch {
	case strings.HasPrefix(key, "c:"):
		return "concurrency", fmt.Sprintf("concurrency slots of client %q", key[2:])
	case strings.HasPrefix(key, "b:"):
		p, c, ok := splitKey(key[2:])
		if !ok {
			return "unknown", key
		}
		if c != "" {
			return p, fmt.Sprintf("pool %s, client %q", p, c)
		}
		return p, "pool " + p
	}
	return "unknown", key
}

// splitKey reverses limiter.Key.String ("len:pool:len:client").
func splitKey(s string) (pool, client string, ok bool) {
	part := func(s string) (string, string, bool) {
		n, rest, found := strings.Cut(s, ":")
		var k int
		if _, err := fmt.Sscanf(n, "%d", &k); err != nil || !found || k < 0 || k > len(rest) {
			return "", "", false
		}
		return rest[:k], strings.TrimPrefix(rest[k:], ":"), true
	}
	pool, rest, ok := part(s)
	if !ok {
		return "", "", false
	}
	client, _, ok = part(rest)
	return pool, client, ok
}

// classOf is the call's class: the priority header, else the route's,
// lowered to what the client's tier may ask for.
func classOf(set *policy.Set, r *Request, route *policy.Route, client *policy.Client) policy.Class {
	c := route.Class
	if h := r.Headers[set.Queue.PriorityHeader]; h != "" {
		if asked, ok := policy.ParseClass(h); ok {
			c = asked
		}
	}
	return max(c, client.Tier.MaxClass) // a larger class is a less urgent one
}

// waitable reports whether a denial may be waited out.
func waitable(dec limiter.Decision) bool {
	return dec.Reason == limiter.ReasonRateLimited || dec.Reason == limiter.ReasonConcurrency
}

// lineOf is the line a denial waits in.
func lineOf(dec limiter.Decision, req limiter.Request) string {
	if dec.Reason == limiter.ReasonConcurrency && req.Hold != nil && req.Hold.Slot != nil {
		return slotLine(req.Hold.Slot.Client)
	}
	if dec.Blocking >= 0 && dec.Blocking < len(req.Takes) {
		return bucketLine(req.Takes[dec.Blocking].Key)
	}
	return ""
}

// busyLine returns the first line, among those of the call's buckets and
// slots, that holds waiters: the call queues behind them instead of trying
// first, so that it cannot take what a better waiter is waiting for.
func (d *Decider) busyLine(req limiter.Request) string {
	for _, t := range req.Takes {
		if k := bucketLine(t.Key); d.queue.Busy(k) {
			return k
		}
	}
	if h := req.Hold; h != nil && h.Slot != nil && !h.Commit {
		if k := slotLine(h.Slot.Client); d.queue.Busy(k) {
			return k
		}
	}
	return ""
}

// held is what a wait in the queue came to.
type held struct {
	res  queue.Result[attempt]
	line string
}

// hold waits in line for req to be admitted, trying on the waiter's behalf.
func (d *Decider) hold(ctx context.Context, line string, r *Request, client *policy.Client, class policy.Class,
	cp policy.ClassPolicy, req limiter.Request, units int64, deadline, notBefore time.Time) held {
	w := &queue.Waiter[attempt]{
		ID: r.ID, Client: client.ID, Class: class, Points: client.Tier.Priority + cp.Urgency, Units: units,
		Deadline: deadline, NotBefore: notBefore, MaxDepth: cp.MaxDepth,
		Try: func(ctx context.Context) queue.Attempt[attempt] {
			dec, err := d.store.Reserve(ctx, req)
			a := queue.Attempt[attempt]{Value: attempt{dec, err}}
			switch {
			case err != nil:
				a.Final = true
			case dec.Allowed:
				a.Granted = true
			case waitable(dec):
				a.Key, a.RetryAfter = lineOf(dec, req), dec.RetryAfter
				if dec.Reason == limiter.ReasonConcurrency {
					a.RetryAfter = 0 // until a slot is given back
				}
			default:
				a.Final = true
			}
			return a
		},
		Undo: func(ctx context.Context, a attempt) { d.undo(ctx, req, a.dec) },
	}
	return held{res: d.queue.Wait(ctx, line, w), line: line}
}

// undo gives back what a grant took for a call that is gone: its hold (its
// budgets' reservation and its slot) and its buckets' units.
func (d *Decider) undo(ctx context.Context, req limiter.Request, dec limiter.Decision) {
	ctx = context.WithoutCancel(ctx)
	if h := req.Hold; h != nil && !h.Commit {
		if l, ok := d.store.(limiter.Ledger); ok {
			if _, err := l.Release(ctx, h.ID); err != nil {
				d.log.LogAttrs(ctx, slog.LevelWarn, "a grant for a call that left was not released; it lapses at its TTL",
					slog.String("reservation", h.ID), slog.Any("error", err))
			}
		}
	}
	var back []limiter.Refund
	var lines []string
	for i, t := range req.Takes {
		if t.Cost == 0 || (t.Shadow && i < len(dec.Buckets) && dec.Buckets[i].Short) {
			continue
		}
		back = append(back, limiter.Refund{Key: t.Key, Limit: t.Limit, Units: t.Cost})
		lines = append(lines, bucketLine(t.Key))
	}
	if a, ok := d.store.(limiter.Adjuster); ok && len(back) > 0 {
		if _, err := a.Refund(ctx, back, time.Time{}); err != nil {
			d.log.LogAttrs(ctx, slog.LevelWarn, "units of a call that left were not returned", slog.Any("error", err))
		}
	}
	if h := req.Hold; h != nil && h.Slot != nil {
		lines = append(lines, slotLine(h.Slot.Client))
	}
	d.queue.Kick(lines...)
}

// recordGrant feeds a grant to the queue's fairness: what the client took
// from each pool.
func (d *Decider) recordGrant(client string, req limiter.Request) {
	for _, t := range req.Takes {
		if t.Key.Client == "" && t.Cost > 0 {
			d.queue.Record(bucketLine(t.Key), client, t.Cost)
		}
	}
}

// kickSettled tells the lines of a settled call's resources that capacity
// may be back.
func (d *Decider) kickSettled(p *pendingCall) {
	lines := []string{slotLine(p.client)}
	for _, t := range p.charged {
		lines = append(lines, bucketLine(t.Key))
	}
	d.queue.Kick(lines...)
}

// queueMetrics counts what the queue does.
type queueMetrics struct {
	exits    *prometheus.CounterVec
	wait     *prometheus.HistogramVec
	starving *prometheus.CounterVec
}

func newQueueMetrics(reg prometheus.Registerer) *queueMetrics {
	m := &queueMetrics{
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_queue_exits_total",
			Help: "Calls that left the hold queue, by class and outcome (granted, denied, timeout, cancelled, removed, full, closed).",
		}, []string{"class", "outcome"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_queue_wait_seconds",
			Help:    "How long calls were held, by class and outcome.",
			Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"class", "outcome"}),
		starving: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_queue_starvation_alerts_total",
			Help: "Calls that waited longer than the policy's queue.starvation_alert, by class.",
		}, []string{"class"}),
	}
	reg.MustRegister(m.exits, m.wait, m.starving)
	return m
}

// queueCollector reports depth and oldest wait per line and class when
// scraped.
type queueCollector struct {
	q      *queue.Queue[attempt]
	depth  *prometheus.Desc
	oldest *prometheus.Desc
}

func newQueueCollector(q *queue.Queue[attempt]) *queueCollector {
	return &queueCollector{q: q,
		depth:  prometheus.NewDesc("tollgate_queue_depth", "Calls held, by pool (or concurrency) and class; deferred calls waiting for the off-peak window are under pool \"off_peak\".", []string{"pool", "class"}, nil),
		oldest: prometheus.NewDesc("tollgate_queue_oldest_wait_seconds", "How long the oldest call held has waited, by pool (or concurrency) and class.", []string{"pool", "class"}, nil),
	}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.depth; ch <- c.oldest }

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.q.Status()
	type k struct{ pool, class string }
	depth, oldest := map[k]int{}, map[k]float64{}
	for _, l := range st.Lines {
		pool, _ := lineLabel(l.Key)
		for class, cs := range l.Classes {
			depth[k{pool, class}] += cs.Depth
			oldest[k{pool, class}] = max(oldest[k{pool, class}], cs.Oldest)
		}
	}
	if st.Parked > 0 {
		depth[k{"off_peak", policy.Deferred.String()}] += st.Parked
	}
	for key, n := range depth {
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(n), key.pool, key.class)
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, oldest[key], key.pool, key.class)
	}
}

// QueueLine is one line in GET /api/queue/status.
type QueueLine struct {
	Queue   string                      `json:"queue"`
	Pool    string                      `json:"pool"`
	Classes map[string]queue.ClassStats `json:"classes"`
}

// QueueStatus answers GET /api/queue/status.
type QueueStatus struct {
	Total  int         `json:"total"`
	Parked int         `json:"parked_for_off_peak"`
	Lines  []QueueLine `json:"lines"`
}

// QueueStatus describes the hold queue now.
func (d *Decider) QueueStatus() QueueStatus {
	st := d.queue.Status()
	out := QueueStatus{Total: st.Total, Parked: st.Parked, Lines: []QueueLine{}}
	for _, l := range st.Lines {
		pool, desc := lineLabel(l.Key)
		out.Lines = append(out.Lines, QueueLine{Queue: desc, Pool: pool, Classes: l.Classes})
	}
	return out
}

func (s *Server) queueRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/queue/status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.decider.QueueStatus())
	})
	mux.HandleFunc("GET /api/queue/position/{requestId}", func(w http.ResponseWriter, r *http.Request) {
		p, ok := s.decider.queue.Position(r.PathValue("requestId"))
		if !ok {
			writeJSON(w, http.StatusNotFound, apiError{"no call with that request id is held"})
			return
		}
		_, p.Key = lineLabel(p.Key)
		writeJSON(w, http.StatusOK, p)
	})
	mux.HandleFunc("DELETE /api/queue/{requestId}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("requestId")
		if !s.decider.queue.Remove(id) {
			writeJSON(w, http.StatusNotFound, apiError{"no call with that request id is held"})
			return
		}
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "call removed from the queue", slog.String("request_id", id))
		writeJSON(w, http.StatusOK, map[string]string{"request_id": id, "outcome": "removed"})
	})
}
