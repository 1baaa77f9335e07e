package limiter

import (
	"context"
	"errors"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// Unlimited is the Limit of a budget that is tracked but never denies.
const Unlimited policy.Money = -1

// Budget is one monthly budget an admission charges: the client's own, or
// a parent's up the chain.
type Budget struct {
	Owner string       // the client (or parent) whose budget this is
	Limit policy.Money // for the period; Unlimited to track only
}

// Slot asks for one of a client's concurrency slots.
type Slot struct {
	Client string
	Max    int64
}

// Hold is what an admission keeps until its call settles: the estimated
// spend, reserved against every budget of the client's chain, and a
// concurrency slot. It is identified by ID and lapses after TTL, when it is
// committed at its estimate (spend is never silently lost).
type Hold struct {
	ID  string
	TTL time.Duration
	// Period names the budget period the spend belongs to, e.g. "2026-11".
	// The caller computes it (calendar month in the policy's time zone).
	Period  string
	Cost    policy.Money
	Budgets []Budget // the client first, then its parents
	Slot    *Slot    // nil: no concurrency cap
	// Commit spends Cost at once instead of holding it: nothing is left to
	// settle (ID, TTL and Slot are ignored). For callers that never learn
	// what a call really cost.
	Commit bool
}

// BudgetState reports one budget of the chain.
type BudgetState struct {
	Owner    string
	Limit    policy.Money // Unlimited when not capped
	Spent    policy.Money // committed this period
	Reserved policy.Money // held by calls in flight
	Short    bool         // this budget could not cover the cost
}

// Remaining is what is left to spend, or Unlimited.
func (b BudgetState) Remaining() policy.Money {
	if b.Limit < 0 {
		return Unlimited
	}
	return max(b.Limit-b.Spent-b.Reserved, 0)
}

// Reasons for a denial by a Hold.
const (
	ReasonBudgetExceeded Reason = "budget_exceeded"
	ReasonConcurrency    Reason = "concurrency"
)

// Outcome of a finished reservation.
type Outcome string

// How a reservation ends.
const (
	OutcomeSettled  Outcome = "settled"  // committed at its actual cost
	OutcomeReleased Outcome = "released" // returned whole: nothing spent
	OutcomeExpired  Outcome = "expired"  // never settled: committed at its estimate
)

// Spend is what a reservation of estimate that ends so has spent (the
// Redis scripts' finish follows it).
func (o Outcome) Spend(estimate, actual policy.Money) policy.Money {
	switch o {
	case OutcomeSettled:
		return actual
	case OutcomeReleased:
		return 0
	}
	return estimate
}

// Settlement is the result of ending a reservation.
type Settlement struct {
	ID        string
	Outcome   Outcome
	Estimated policy.Money
	Spent     policy.Money
	// Repeat is set when the reservation had already ended (by the same or
	// another outcome): nothing changed this time.
	Repeat bool
}

// ErrUnknownReservation is returned for an id that was never held (or whose
// record of ending has itself expired).
var ErrUnknownReservation = errors.New("limiter: unknown reservation")

// ErrDuplicateReservation is returned when a Hold reuses a live or ended id.
var ErrDuplicateReservation = errors.New("limiter: reservation id already used")

// Ledger ends the reservations a Store's Holds create, and reports budgets.
// Implementations are safe for concurrent use; every method is one atomic
// step (one round trip for a remote store) and honours ctx.
type Ledger interface {
	// Settle commits actual spend for the reservation: the estimate held is
	// returned and the actual charged to every budget of the chain (more
	// than the estimate is charged in full). It frees the slot. Settling
	// again returns the first Settlement with Repeat set.
	Settle(ctx context.Context, id string, actual policy.Money) (Settlement, error)
	// Release returns everything the reservation holds.
	Release(ctx context.Context, id string) (Settlement, error)
	// Expire commits up to max reservations whose TTL has passed at their
	// estimate; it returns how many it ended. now zero means the store's
	// clock.
	Expire(ctx context.Context, now time.Time, max int) (int, error)
	// Usage reports the budgets of a chain for a period, and the owner's
	// (first budget's) slots in use and savings in the period.
	Usage(ctx context.Context, period string, budgets []Budget, now time.Time) (Usage, error)
}

// Usage is a budget chain's standing.
type Usage struct {
	Budgets  []BudgetState
	InFlight int64
	// Savings are the owner's (first budget's) savings in the period, by
	// strategy, sorted by name; a strategy whose savings sum to zero is
	// left out (see SavingsList).
	Savings []Saving
}

// Backend is a Store that also keeps budgets and slots.
type Backend interface {
	Store
	Ledger
}
