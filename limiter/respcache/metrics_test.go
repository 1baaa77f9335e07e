package respcache_test

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/metricset"
	"github.com/tollgate/tollgate/limiter/respcache"
)

// value returns the sample of a metric with exactly these label values
// (name, value pairs), failing if there is none.
func value(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels) {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	require.FailNow(t, "no such sample", "%s %v", name, labels)
	return 0
}

func hasLabels(m *dto.Metric, labels []string) bool {
	if len(m.GetLabel())*2 != len(labels) {
		return false
	}
	for i := 0; i < len(labels); i += 2 {
		if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == labels[i] && l.GetValue() == labels[i+1] }) {
			return false
		}
	}
	return true
}

func TestMetrics(t *testing.T) {
	reg := metricset.NewRegistry()
	_, err := respcache.NewMetrics(reg)
	require.NoError(t, err)

	t.Run("promlint", func(t *testing.T) {
		fams, err := reg.Gather()
		require.NoError(t, err)
		problems, err := promlint.NewWithMetricFamilies(fams).Lint()
		require.NoError(t, err)
		assert.Empty(t, problems)
	})
	t.Run("catalog", func(t *testing.T) {
		want := map[string][]string{
			"tollgate_cache_lookups_total":      {"kind", "level", "result"},
			"tollgate_cache_evictions_total":    {"level", "reason"},
			"tollgate_cache_bytes":              {"level"},
			"tollgate_cache_entries":            {"level"},
			"tollgate_cache_flight_waits_total": {"result"},
			"tollgate_cache_l2_errors_total":    nil,
		}
		got := map[string][]string{}
		for _, s := range reg.Catalog() {
			got[s.Name] = s.Labels
		}
		assert.Equal(t, len(want), len(got))
		for name, labels := range want {
			assert.ElementsMatch(t, labels, got[name], name)
		}
	})
	t.Run("all or none", func(t *testing.T) {
		before, err := reg.Gather()
		require.NoError(t, err)
		_, err = respcache.NewMetrics(reg)
		require.ErrorContains(t, err, "already registered")
		after, err := reg.Gather()
		require.NoError(t, err)
		assert.Len(t, after, len(before), "a failed registration leaves the registry as it was")

		fresh := prometheus.NewRegistry()
		require.NoError(t, fresh.Register(prometheus.NewCounter(prometheus.CounterOpts{Name: "tollgate_cache_l2_errors_total", Help: "taken"})))
		_, err = respcache.NewMetrics(fresh)
		require.Error(t, err)
		fams, err := fresh.Gather()
		require.NoError(t, err)
		assert.Len(t, fams, 1, "nothing of the failed set stays registered")
	})
}
