package respcache_test

import (
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/limiter/respcache/cachetest"
)

var srv *redistest.Server

func TestMain(m *testing.M) { os.Exit(redistest.Main(m, &srv)) }

// redisConfig is a test's own prefix on the package's server.
func redisConfig(t testing.TB, o cachetest.Options) respcache.RedisConfig {
	cfg := respcache.DefaultRedisConfig()
	cfg.Prefix = redistest.Prefix(t)
	cfg.MaxEntryBytes = cachetest.MaxEntryBytes
	if o.Clock != nil {
		cfg.Clock = o.Clock
	}
	cfg.Metrics = o.Metrics
	return cfg
}

func newRedis(t testing.TB, c redis.UniversalClient, cfg respcache.RedisConfig) *respcache.Redis {
	t.Helper()
	r, err := respcache.NewRedis(c, cfg)
	require.NoError(t, err)
	return r
}

func TestRedisConformance(t *testing.T) {
	cachetest.Run(t, func(t *testing.T, o cachetest.Options) []respcache.Cache {
		cfg := redisConfig(t, o)
		cs := make([]respcache.Cache, o.Members)
		for i := range cs {
			cs[i] = newRedis(t, srv.Client(t), cfg) // a member: its own client and id, one prefix
		}
		return cs
	})
}

func TestTieredConformance(t *testing.T) {
	cachetest.Run(t, func(t *testing.T, o cachetest.Options) []respcache.Cache {
		cfg := redisConfig(t, o)
		cs := make([]respcache.Cache, o.Members)
		for i := range cs {
			l1, err := respcache.NewMemory(respcache.MemoryConfig{MaxEntryBytes: cachetest.MaxEntryBytes, Clock: o.Clock, Metrics: o.Metrics})
			require.NoError(t, err)
			cs[i] = respcache.NewTiered(l1, newRedis(t, srv.Client(t), cfg))
		}
		return cs
	})
}
