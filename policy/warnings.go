package policy

import (
	"fmt"
	"strings"
)

// Warnings lists what is valid but likely a mistake, one sentence each
// starting with its YAML path, in route order: an LLM route (OpenAI,
// Anthropic) whose money can come from nowhere, because none of its pools
// has a price and no entry of models: prices the models it takes, so that
// its calls cost $0 and budgets never move.
func (s *Set) Warnings() []string {
	var out []string
	for _, r := range s.Routes {
		if r.Provider != ProviderOpenAI && r.Provider != ProviderAnthropic {
			continue
		}
		if !s.routePriced(r) {
			out = append(out, "routes."+r.Name+": an LLM route whose pools have no price and whose models no entry of models: prices; its calls cost $0 and budgets never move")
		}
	}
	if q := s.Queue; q.StarvationAlert > 0 && q.StarvationAlert >= q.LongestWait() {
		out = append(out, fmt.Sprintf("queue.starvation_alert: %v, but no class holds a call that long (the longest max_wait is %v), so the starvation alert never fires",
			q.StarvationAlert, q.LongestWait()))
	}
	return append(out, s.optimizeWarnings()...)
}

// optimizeWarnings: a downgrade to a model that costs more than one the
// rule takes from, and a flex rule whose models offer no flex tier.
func (s *Set) optimizeWarnings() []string {
	if s.Optimize == nil {
		return nil
	}
	var out []string
	for _, r := range s.Optimize.Rules {
		path := "optimize.rules." + r.Name
		if r.Downgrade != "" {
			to, _ := s.Model(r.Downgrade)
			for _, from := range r.Models {
				m, known := s.Model(strings.TrimSuffix(from, "*"))
				if known && to != nil && (to.Input.Cmp(m.Input) > 0 || to.Output.Cmp(m.Output) > 0) {
					out = append(out, fmt.Sprintf("%s: downgrades %s to %s, whose prices are higher (%s in, %s out against %s, %s)",
						path, from, r.Downgrade, to.Input, to.Output, m.Input, m.Output))
				}
			}
		}
		if r.Flex {
			target := r.Models
			if r.Downgrade != "" {
				target = []string{r.Downgrade}
			}
			flex := len(target) == 0 // no models named: some call may be on a flex model
			for _, name := range target {
				if m, known := s.Model(strings.TrimSuffix(name, "*")); known && m.HasFlex {
					flex = true
				}
			}
			if !flex {
				out = append(out, path+": flex, but none of its models has flex prices in models: (flex_input, flex_output), so it never applies")
			}
		}
	}
	return out
}

func (s *Set) routePriced(r *Route) bool {
	for _, p := range r.Pools {
		if !p.Price.IsZero() {
			return true
		}
	}
	if s.Models["*"] != nil {
		return true
	}
	if len(r.Models) == 0 {
		return len(s.Models) > 0
	}
	for _, m := range r.Models {
		if _, known := s.Model(m); known {
			return true
		}
		if _, known := s.Model(strings.TrimSuffix(m, "*")); known {
			return true
		}
	}
	return false
}
