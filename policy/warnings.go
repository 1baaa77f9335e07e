package policy

import "strings"

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
