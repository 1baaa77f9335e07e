package costing

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// Signal is what an upstream response says about the provider's own rate
// limits: how much it has left, and whether it refused the call for rate.
type Signal struct {
	// RemainingTokens and RemainingRequests are the provider's counts of
	// what is left; -1 when it did not say.
	RemainingTokens, RemainingRequests int64
	// ResetTokens and ResetRequests are how long until those counts are
	// whole again; zero when it did not say.
	ResetTokens, ResetRequests time.Duration
	// Limited reports a refusal for rate (HTTP 429); Pause is how long to
	// hold off (its Retry-After, else the reset of what ran out, else
	// DefaultPause). A 503 or Anthropic's 529 with a Retry-After pauses too.
	Limited bool
	Pause   time.Duration
}

// DefaultPause is how long a 429 without any hint of its own pauses a pool.
const DefaultPause = time.Second

// MaxPause bounds a pause, whatever the upstream says.
const MaxPause = time.Hour

// Known reports whether the signal says anything at all.
func (s Signal) Known() bool {
	return s.RemainingTokens >= 0 || s.RemainingRequests >= 0 || s.Pause > 0
}

// ParseSignal reads the rate-limit headers of an upstream response (header
// names in lower case) from provider: OpenAI's
// x-ratelimit-{remaining,reset}-{requests,tokens} (resets such as "6m0s"),
// Anthropic's anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{remaining,reset}
// (resets are RFC 3339 times), SendGrid's x-ratelimit-remaining/-reset (a
// Unix time), and Retry-After (seconds or an HTTP date; OpenAI's
// retry-after-ms too). now turns absolute resets into durations. Values it
// cannot read are ignored.
func ParseSignal(provider policy.Provider, status int, h map[string]string, now time.Time) Signal {
	s := Signal{RemainingTokens: -1, RemainingRequests: -1}
	switch provider {
	case policy.ProviderOpenAI:
		s.RemainingTokens = count(h["x-ratelimit-remaining-tokens"])
		s.RemainingRequests = count(h["x-ratelimit-remaining-requests"])
		s.ResetTokens = goDuration(h["x-ratelimit-reset-tokens"])
		s.ResetRequests = goDuration(h["x-ratelimit-reset-requests"])
	case policy.ProviderAnthropic:
		const p = "anthropic-ratelimit-"
		s.RemainingRequests = count(h[p+"requests-remaining"])
		s.ResetRequests = untilTime(h[p+"requests-reset"], now)
		s.RemainingTokens = count(h[p+"tokens-remaining"])
		s.ResetTokens = untilTime(h[p+"tokens-reset"], now)
		// Without the combined count, the tighter of input and output.
		for _, kind := range []string{"input-tokens", "output-tokens"} {
			if n := count(h[p+kind+"-remaining"]); n >= 0 && h[p+"tokens-remaining"] == "" && (s.RemainingTokens < 0 || n < s.RemainingTokens) {
				s.RemainingTokens, s.ResetTokens = n, untilTime(h[p+kind+"-reset"], now)
			}
		}
	case policy.ProviderSendGrid:
		s.RemainingRequests = count(h["x-ratelimit-remaining"])
		if t, err := strconv.ParseInt(strings.TrimSpace(h["x-ratelimit-reset"]), 10, 64); err == nil && t > 0 {
			s.ResetRequests = max(time.Unix(t, 0).Sub(now), 0)
		}
	}
	retry := retryAfter(h, now)
	switch {
	case status == http.StatusTooManyRequests:
		s.Limited = true
		s.Pause = retry
		if s.Pause <= 0 { // the reset of whatever ran out
			if s.RemainingTokens == 0 {
				s.Pause = max(s.Pause, s.ResetTokens)
			}
			if s.RemainingRequests == 0 {
				s.Pause = max(s.Pause, s.ResetRequests)
			}
		}
		if s.Pause <= 0 {
			s.Pause = DefaultPause
		}
	case status == http.StatusServiceUnavailable || status == 529:
		s.Pause = retry
	default:
		// A provider that reports nothing left is as good as a 429 until
		// its reset.
		if s.RemainingTokens == 0 && s.ResetTokens > 0 {
			s.Pause = s.ResetTokens
		}
		if s.RemainingRequests == 0 && s.ResetRequests > 0 {
			s.Pause = max(s.Pause, s.ResetRequests)
		}
	}
	s.Pause = min(s.Pause, MaxPause)
	return s
}

// count reads a non-negative integer header, or -1.
func count(v string) int64 {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// goDuration reads OpenAI's resets ("1s", "6m0s", "12ms", "0.5s"); zero
// when unreadable or negative.
func goDuration(v string) time.Duration {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 {
		return 0
	}
	return d
}

// untilTime reads an RFC 3339 time and returns how long until it.
func untilTime(v string, now time.Time) time.Duration {
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(v))
	if err != nil {
		return 0
	}
	return max(t.Sub(now), 0)
}

// retryAfter reads retry-after-ms, else Retry-After (delta seconds, whole
// or decimal, or an HTTP date); zero when absent or unreadable.
func retryAfter(h map[string]string, now time.Time) time.Duration {
	if v := strings.TrimSpace(h["retry-after-ms"]); v != "" && !strings.ContainsAny(v, "hmsuµn") {
		if d := goDuration(v + "ms"); d > 0 {
			return min(d, MaxPause)
		}
	}
	v := strings.TrimSpace(h["retry-after"])
	if v == "" {
		return 0
	}
	if !strings.ContainsAny(v, "hmsuµn ,:") { // "30" or "1.5", not a date or a Go duration
		return min(goDuration(v+"s"), MaxPause)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), MaxPause)
	}
	return 0
}
