package admission

import (
	"context"
	"slices"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// PoolAvailability is one pool as GET /api/resources/availability shows
// it: its bucket's units left and shape, and, for a client, the client's
// own bucket in it (when its tier caps clients there).
type PoolAvailability struct {
	Pool       string  `json:"pool"`
	Unit       string  `json:"unit"`
	Remaining  int64   `json:"remaining"`
	Capacity   int64   `json:"capacity"`
	Refill     int64   `json:"refill"`
	RefillPer  float64 `json:"refill_per_seconds"`
	FullIn     float64 `json:"full_in_seconds"`
	Shadow     bool    `json:"shadow,omitempty"`
	ClientLeft *int64  `json:"client_remaining,omitempty"`
	ClientCap  *int64  `json:"client_capacity,omitempty"`
}

// Availability answers GET /api/resources/availability.
type Availability struct {
	Pools []PoolAvailability `json:"pools"`
	// The client's view, when one was asked for.
	Client        string        `json:"client,omitempty"`
	Tier          string        `json:"tier,omitempty"`
	Budgets       []UsageBudget `json:"budgets,omitempty"`
	InFlight      *int64        `json:"in_flight,omitempty"`
	MaxConcurrent *int64        `json:"max_concurrent,omitempty"`
	SlotsLeft     *int64        `json:"concurrency_left,omitempty"` // absent: uncapped
}

// Availability reports every pool's bucket now, from one Peek at zero cost
// (so it changes nothing), and with clientID (not empty) that client's
// buckets, budgets and concurrency slots.
func (s *Service) Availability(ctx context.Context, clientID string) (Availability, error) {
	set := s.policies.Policy()
	var client *policy.Client
	if clientID != "" {
		c, ok := set.Client(clientID)
		if !ok {
			return Availability{}, ErrUnknownClient
		}
		client = c
	}
	names := make([]string, 0, len(set.Pools))
	for n := range set.Pools {
		names = append(names, n)
	}
	slices.Sort(names)
	var takes []limiter.Take
	for _, n := range names {
		p := set.Pools[n]
		takes = append(takes, limiter.Take{Key: limiter.Key{Pool: n}, Limit: limiter.Limit(p.Limit)})
		if client != nil {
			if cl, ok := client.Tier.ClientLimits[n]; ok {
				takes = append(takes, limiter.Take{Key: limiter.Key{Pool: n, Client: client.ID}, Limit: limiter.Limit(cl)})
			}
		}
	}
	out := Availability{Pools: []PoolAvailability{}}
	if len(takes) > 0 {
		dec, err := s.store.Peek(ctx, limiter.Request{Takes: takes})
		if err != nil {
			return Availability{}, err
		}
		for i, t := range takes {
			b := dec.Buckets[i]
			if t.Key.Client != "" {
				pa := &out.Pools[len(out.Pools)-1]
				left, capacity := b.Remaining, t.Limit.Capacity
				pa.ClientLeft, pa.ClientCap = &left, &capacity
				continue
			}
			p := set.Pools[t.Key.Pool]
			per := p.Limit.Per
			if per <= 0 {
				per = time.Second
			}
			out.Pools = append(out.Pools, PoolAvailability{Pool: p.Name, Unit: string(p.Unit), Remaining: b.Remaining, Capacity: p.Limit.Capacity,
				Refill: p.Limit.Refill, RefillPer: per.Seconds(), FullIn: b.ResetAfter.Seconds(), Shadow: set.Shadowed(p)})
		}
	}
	if client == nil {
		return out, nil
	}
	u, err := s.Usage(ctx, client.ID)
	if err != nil {
		return Availability{}, err
	}
	out.Client, out.Tier, out.Budgets = client.ID, u.Tier, u.Budgets
	inFlight, maxC := u.InFlight, u.MaxConcurrent
	out.InFlight, out.MaxConcurrent = &inFlight, &maxC
	if maxC > 0 {
		left := max(maxC-inFlight, 0)
		out.SlotsLeft = &left
	}
	return out, nil
}

// StopScheduler stops letting held calls go (see queue.Queue.Stop).
func (s *Service) StopScheduler() { s.queue.Stop() }

// StartScheduler lets held calls go again.
func (s *Service) StartScheduler() { s.queue.Start() }

// SchedulerStopped reports whether the scheduler is stopped.
func (s *Service) SchedulerStopped() bool { return s.queue.Stopped() }
