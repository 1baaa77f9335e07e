package respcache_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redistest"
	"github.com/tollgate/tollgate/limiter/respcache"
	"github.com/tollgate/tollgate/limiter/respcache/cachetest"
)

// chatBody returns an n-byte body shaped like a chat completion: JSON
// around text of common words, as compressible as real answers are
// (about 3:1 with DEFLATE).
func chatBody(n int, seed uint64) []byte {
	words := strings.Fields("the a of to and in is it that for on with as was be this by are or at from but not have an they which one you were all we her she there would their will when who him been has more if no out do so can what up said about other into than its time only could new them man some these then two first may any like now my such make over our even most me state after also made many before must through back years where much your way well down should because each just those people how too little good very")
	r := rand.New(rand.NewPCG(seed, 1))
	var sb strings.Builder
	sb.WriteString(`{"id":"chatcmpl-` + strconv.FormatUint(seed, 16) + `","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"`)
	tail := `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":512,"completion_tokens":900,"total_tokens":1412}}`
	for sb.Len() < n-len(tail) {
		sb.WriteString(words[r.IntN(len(words))])
		sb.WriteByte(' ')
	}
	return []byte((sb.String() + tail)[len(sb.String())+len(tail)-n:])
}

func chatEntry(n int, seed uint64) respcache.Entry {
	return respcache.Entry{Status: 200, Body: chatBody(n, seed), Cost: 1_234_000,
		Headers: map[string]string{"content-type": "application/json", "openai-processing-ms": "812", "x-request-id": "req_" + strconv.FormatUint(seed, 16)}}
}

func hashKey(i int) respcache.Key {
	return respcache.Key{Kind: respcache.Response, Scope: "client-" + strconv.Itoa(i%100), Route: "openai-chat", Hash: fmt.Sprintf("%064x", i)}
}

// BenchmarkGet: a hit on a 4 KB entry, at each level.
func BenchmarkGet(b *testing.B) {
	ctx := context.Background()
	e := chatEntry(4096, 1)
	k := hashKey(1)
	caches := map[string]func(b *testing.B) respcache.Cache{
		"memory": func(b *testing.B) respcache.Cache { return newMemory(b, respcache.DefaultMemoryConfig()) },
		"tiered-l1": func(b *testing.B) respcache.Cache {
			cfg := redisConfig(b, cachetest.Options{})
			cfg.MaxEntryBytes = respcache.DefaultMaxEntryBytes
			return respcache.NewTiered(newMemory(b, respcache.DefaultMemoryConfig()), newRedis(b, srv.Client(b), cfg))
		},
		"redis-l2": func(b *testing.B) respcache.Cache {
			cfg := redisConfig(b, cachetest.Options{})
			cfg.MaxEntryBytes = respcache.DefaultMaxEntryBytes
			return newRedis(b, srv.Client(b), cfg)
		},
	}
	for _, name := range []string{"memory", "tiered-l1", "redis-l2"} {
		b.Run(name, func(b *testing.B) {
			c := caches[name](b)
			require.NoError(b, c.Complete(ctx, k, e, time.Hour))
			_, ok := c.Get(ctx, k)
			require.True(b, ok)
			b.ReportAllocs()
			b.SetBytes(int64(len(e.Body)))
			for b.Loop() {
				if _, ok := c.Get(ctx, k); !ok {
					b.Fatal("miss")
				}
			}
		})
		b.Run(name+"-parallel", func(b *testing.B) {
			c := caches[name](b)
			require.NoError(b, c.Complete(ctx, k, e, time.Hour))
			b.ReportAllocs()
			b.SetBytes(int64(len(e.Body)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, ok := c.Get(ctx, k); !ok {
						b.Error("miss")
						return
					}
				}
			})
		})
	}
}

// BenchmarkComplete: recording a 4 KB entry (a new key each time).
func BenchmarkComplete(b *testing.B) {
	ctx := context.Background()
	e := chatEntry(4096, 1)
	for name, c := range map[string]func(b *testing.B) respcache.Cache{
		"memory": func(b *testing.B) respcache.Cache { return newMemory(b, respcache.DefaultMemoryConfig()) },
		"redis-l2": func(b *testing.B) respcache.Cache {
			cfg := redisConfig(b, cachetest.Options{})
			cfg.MaxEntryBytes = respcache.DefaultMaxEntryBytes
			return newRedis(b, srv.Client(b), cfg)
		},
	} {
		b.Run(name, func(b *testing.B) {
			c := c(b)
			b.ReportAllocs()
			b.SetBytes(int64(len(e.Body)))
			i := 0
			for b.Loop() {
				i++
				if err := c.Complete(ctx, hashKey(i), e, time.Minute); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkMemoryPerKB measures what a cached KB of body costs: in the
// Go heap for Memory (against its own estimate, Size), and in Redis's
// used_memory for the Redis level (deflated). Each iteration caches
// 2,000 chat-shaped entries of the size named.
func BenchmarkMemoryPerKB(b *testing.B) {
	ctx := context.Background()
	const n = 2000
	for _, size := range []int{1024, 4096, 16384} {
		entries := make([]respcache.Entry, n)
		bodyBytes := 0
		for i := range entries {
			entries[i] = chatEntry(size, uint64(i))
			bodyBytes += size
		}
		kb := float64(bodyBytes) / 1024
		b.Run(fmt.Sprintf("memory/%dB", size), func(b *testing.B) {
			var heap, est float64
			for b.Loop() {
				b.StopTimer()
				before := heapInUse()
				m, err := respcache.NewMemory(respcache.MemoryConfig{MaxBytes: 1 << 30, MaxEntryBytes: 1 << 20})
				require.NoError(b, err)
				b.StartTimer()
				for i, e := range entries {
					if err := m.Complete(ctx, hashKey(i), e, time.Hour); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				after := heapInUse()
				_, bytes := m.Stats()
				heap, est = float64(after)-float64(before), float64(bytes)
				runtime.KeepAlive(m)
				require.NoError(b, m.Close())
				b.StartTimer()
			}
			b.ReportMetric(heap/kb, "heap-B/body-KB")
			b.ReportMetric(est/kb, "estimated-B/body-KB")
		})
		b.Run(fmt.Sprintf("redis/%dB", size), func(b *testing.B) {
			c := srv.Client(b)
			used := func() float64 {
				info, err := c.Info(ctx, "memory").Result()
				require.NoError(b, err)
				for _, line := range strings.Split(info, "\r\n") {
					if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
						f, err := strconv.ParseFloat(v, 64)
						require.NoError(b, err)
						return f
					}
				}
				b.Fatal("no used_memory")
				return 0
			}
			var mem float64
			for b.Loop() {
				b.StopTimer()
				cfg := respcache.DefaultRedisConfig()
				cfg.Prefix = redistest.Prefix(b)
				r := newRedis(b, c, cfg)
				before := used()
				b.StartTimer()
				for i, e := range entries {
					if err := r.Complete(ctx, hashKey(i), e, time.Minute); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				mem = used() - before
				dropped, err := r.Invalidate(ctx, respcache.Response, "", "openai-chat")
				require.NoError(b, err)
				require.Equal(b, n, dropped)
				b.StartTimer()
			}
			b.ReportMetric(mem/kb, "redis-B/body-KB")
		})
	}
}
