package redisstore

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// How a failed call is classified: unavailable (decide without Redis) and
// unsent (safe to send again).

// Unavailable reports whether err says Redis could not serve the call at
// all — no connection, a timeout, a closed client, or a server that
// answers it cannot serve now (loading its data after a restart, a replica
// after a failover, a cluster without quorum) — rather than that it
// refused the call. A fleet member decides on its own share while Redis is
// unavailable.
func (s *Store) Unavailable(err error) bool { return Unavailable(err) }

// Unavailable is Store.Unavailable.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	var re redis.Error
	if errors.As(err, &re) {
		msg := re.Error()
		for _, p := range []string{"LOADING ", "MASTERDOWN ", "CLUSTERDOWN ", "TRYAGAIN ", "READONLY ", "BUSY "} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout)
}

// Unsent reports whether err says a call never ran in Redis: no connection
// could be made to send it (refused, a dial timeout, no free connection in
// the pool, a closed client), or Redis answered that it would not run it
// now (loading, busy, a read-only replica…). Anything else that failed —
// a reply that came too late, a connection lost after the call went out —
// may have run: a caller that sends such a call again must be able to
// tell a second run from the first.
func (s *Store) Unsent(err error) bool { return Unsent(err) }

// Unsent is Store.Unsent.
func Unsent(err error) bool {
	if err == nil {
		return false
	}
	var re redis.Error
	if errors.As(err, &re) {
		return Unavailable(err) // a server that answers it cannot serve now ran nothing
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout)
}

// allUnsent reports whether none of cmds ran (each failed Unsent).
func allUnsent(cmds []*redis.Cmd) bool {
	for _, c := range cmds {
		if !Unsent(c.Err()) {
			return false
		}
	}
	return true
}
