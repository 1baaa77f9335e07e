package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/tollgate/tollgate/limiter/redisstore"
)

// tripsByScript is a go-redis hook that counts a load run's round trips
// by what they ran (the script's name for EVALSHA and EVAL, else the
// command), so that a bench shows which kind of call the round trips are.
type tripsByScript struct {
	mu    sync.Mutex
	n     map[string]int64
	names map[string]string // script hash → name
}

func newTripsByScript() *tripsByScript {
	t := &tripsByScript{n: map[string]int64{}, names: map[string]string{}}
	for name, sc := range redisstore.Scripts {
		t.names[sc.Hash()] = name
	}
	return t
}

func (t *tripsByScript) kind(cmd redis.Cmder) string {
	args := cmd.Args()
	name := strings.ToLower(cmd.Name())
	if (name == "evalsha" || name == "evalsha_ro") && len(args) > 1 {
		if s, ok := args[1].(string); ok {
			if n, ok := t.names[s]; ok {
				return n
			}
		}
	}
	if name == "eval" && len(args) > 1 {
		if s, ok := args[1].(string); ok {
			for h, n := range t.names {
				if redis.NewScript(s).Hash() == h {
					return n
				}
			}
		}
	}
	return name
}

func (t *tripsByScript) DialHook(next redis.DialHook) redis.DialHook { return next }

func (t *tripsByScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		k := t.kind(cmd)
		t.mu.Lock()
		t.n[k]++
		t.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (t *tripsByScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		t.mu.Lock()
		t.n["pipeline"]++
		t.mu.Unlock()
		return next(ctx, cmds)
	}
}

// snapshot is the counts so far.
func (t *tripsByScript) snapshot() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.n)
}

// since formats the counts after before, per 1,000 calls, largest first.
func (t *tripsByScript) since(before map[string]int64, calls int64) string {
	now := t.snapshot()
	keys := slices.Collect(maps.Keys(now))
	slices.SortFunc(keys, func(a, b string) int { return int((now[b] - before[b]) - (now[a] - before[a])) })
	var parts []string
	for _, k := range keys {
		if d := now[k] - before[k]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s %.1f", k, 1000*float64(d)/float64(max(calls, 1))))
		}
	}
	return strings.Join(parts, ", ")
}
