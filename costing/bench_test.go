package costing_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/costing"
	"github.com/tollgate/tollgate/policy"
)

func BenchmarkEstimateChat4KB(b *testing.B) {
	body, err := os.ReadFile(filepath.Join(bodiesDir, "openai", "chat-4kb.json"))
	if err != nil {
		b.Fatal(err)
	}
	tok := tokenizer(b)
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if _, err := costing.ParseOpenAI("/v1/chat/completions", body, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := costing.ParseOpenAI("/v1/chat/completions", body, tok); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func BenchmarkSMSSegments(b *testing.B) {
	cases := map[string]string{
		"gsm-160":          strings.Repeat("a", 160),
		"gsm-1600-escapes": strings.Repeat("Pay €10 {ref} ", 114),
		"ucs2-1600-emoji":  strings.Repeat("😀", 1600),
	}
	for _, name := range sortedKeys(cases) {
		text := cases[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				costing.SMSSegments(text)
			}
		})
	}
}

// BenchmarkCount shows the cost of counting ordinary text (tiktoken-go) and
// of one long run (the heap path), per encoding.
func BenchmarkCount(b *testing.B) {
	tok := tokenizer(b)
	cases := map[string]string{
		"prose-4KB": strings.Repeat("The quick brown fox jumps over the lazy dog. ", 91),
		"run-100KB": strings.Repeat("a", 100_000),
		"cjk-30KB":  strings.Repeat("お誕生日おめでとう、", 1000),
	}
	for _, enc := range []string{costing.EncodingCL100K, costing.EncodingO200K} {
		for _, name := range sortedKeys(cases) {
			text := cases[name]
			b.Run(enc+"/"+name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(text)))
				for b.Loop() {
					tok.Count(enc, text)
				}
			})
		}
	}
}

// BenchmarkSettle reads a recorded response for its usage and prices it:
// what ext_proc does for every admitted call.
func BenchmarkSettle(b *testing.B) {
	set, err := policy.Compile(policy.Source{Name: "s.yaml", Data: []byte(settlePolicy)})
	if err != nil {
		b.Fatal(err)
	}
	r := set.Route("openai")
	est := costing.Estimator{Tok: tokenizer(b)}.Estimate(set, r, costing.Call{Path: "/v1/chat/completions",
		Body: []byte(`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`), BodySize: 62})
	for _, tc := range []struct {
		name string
		file string
		sse  bool
	}{{"json_chat", "openai-chat.json", false}, {"sse_chat", "openai-chat-stream.sse", true}, {"sse_anthropic", "anthropic-stream.sse", true}} {
		body := response(b, tc.file)
		provider := policy.ProviderOpenAI
		if strings.HasPrefix(tc.file, "anthropic") {
			provider = policy.ProviderAnthropic
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				rd := costing.NewResponseReader(provider, tc.sse, tc.sse)
				rd.Write(body)
				rd.Flush()
				u, found, _ := rd.Usage()
				if !found {
					b.Fatal("no usage")
				}
				_ = costing.Price(set, r, est, u)
			}
		})
	}
}

// BenchmarkEstimate is what a decision spends on the body of a model-routed
// chat call: read its model for routing, then estimate it. "parse-twice"
// is the way callers did it before NewCall (ParseLLMBody, then Estimate of
// a Call literal); "parse-once" shares one decode through NewCall. "cold"
// counts every text (no cache); "warm" sends the same body again, as a
// worker resending its system prompt and history does, and finds every
// count in the cache. parse-once reports its whole-body decodes per call
// (decodes/op: 1; parse-twice makes 2, one in ParseLLMBody and one in
// Estimate, and a third when the count is inexact).
func BenchmarkEstimate(b *testing.B) {
	set := routedSet(b)
	tok := tokenizer(b)
	cold := costing.Estimator{Tok: costing.ShareEncoders(tok, costing.TokenizerConfig{})}
	warm := costing.Estimator{Tok: costing.ShareEncoders(tok, costing.DefaultTokenizerConfig())}
	for _, file := range []string{"openai-chat-1k.json", filepath.Join("openai", "chat-4kb.json")} {
		body, err := os.ReadFile(filepath.Join(bodiesDir, file))
		if err != nil {
			b.Fatal(err)
		}
		const host, path = "api.openai.com", "/v1/chat/completions"
		b.Run(filepath.Base(file)+"/parse-twice/cold", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				m, _ := costing.ParseLLMBody(body)
				r := set.MatchRoute(host, path, m.Model)
				if e := cold.Estimate(set, r, costing.Call{Path: path, Body: body, BodySize: int64(len(body))}); !e.Exact {
					b.Fatal("inexact")
				}
			}
		})
		for name, est := range map[string]costing.Estimator{"cold": cold, "warm": warm} {
			b.Run(filepath.Base(file)+"/parse-once/"+name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				decodes := 0
				for b.Loop() {
					c := costing.NewCall(path, "application/json", body, int64(len(body)))
					if e := est.Estimate(set, routeCall(set, host, &c), c); !e.Exact {
						b.Fatal("inexact")
					}
					decodes += costing.WholeDecodes(&c)
				}
				b.ReportMetric(float64(decodes)/float64(b.N), "decodes/op")
			})
		}
		b.Run(filepath.Base(file)+"/parse-once/warm-parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c := costing.NewCall(path, "application/json", body, int64(len(body)))
					if e := warm.Estimate(set, routeCall(set, host, &c), c); !e.Exact {
						b.Error("inexact")
						return
					}
				}
			})
		})
	}
}

// BenchmarkParseBody is the decode alone: ParseLLMBody as routing used it,
// and the one decode a Call makes (of which Model reads a field).
func BenchmarkParseBody(b *testing.B) {
	body, err := os.ReadFile(filepath.Join(bodiesDir, "openai-chat-1k.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("ParseLLMBody", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			costing.ParseLLMBody(body)
		}
	})
	b.Run("Call.Model", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			c := costing.NewCall("/v1/chat/completions", "", body, int64(len(body)))
			c.Model()
		}
	})
}

// BenchmarkCountCache compares counting a text (off) with finding its
// count (hit) and with counting and storing it (miss: texts that rotate
// through a cache of one set), by length: below CacheMinLen a lookup would
// save little.
func BenchmarkCountCache(b *testing.B) {
	tok := tokenizer(b)
	off := costing.ShareEncoders(tok, costing.TokenizerConfig{})
	prose := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 100)
	for _, n := range []int{4, 8, 16, 32, 64, 256, 4096} {
		texts := make([]string, 1024)
		for i := range texts {
			texts[i] = fmt.Sprintf("%04d", i) + prose[:n-4]
		}
		b.Run(fmt.Sprintf("len-%d/off", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				off.Count(costing.EncodingO200K, texts[0])
			}
		})
		b.Run(fmt.Sprintf("len-%d/hit", n), func(b *testing.B) {
			on := costing.ShareEncoders(tok, costing.TokenizerConfig{CacheEntries: 1 << 16, CacheBytes: 1 << 20, CacheMinLen: 1})
			b.ReportAllocs()
			for b.Loop() {
				on.Count(costing.EncodingO200K, texts[0])
			}
		})
		b.Run(fmt.Sprintf("len-%d/miss", n), func(b *testing.B) {
			tiny := costing.ShareEncoders(tok, costing.TokenizerConfig{CacheEntries: 4, CacheBytes: 64, CacheMinLen: 1})
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				tiny.Count(costing.EncodingO200K, texts[i%len(texts)])
				i++
			}
		})
	}
}
