package costing_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tollgate/tollgate/costing"
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
