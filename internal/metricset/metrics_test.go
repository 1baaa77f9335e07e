package metricset_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/metricset"
)

func build() *metricset.Set {
	var s metricset.Set
	s.Counter(prometheus.CounterOpts{Name: "tollgate_test_a_total", Help: "a"})
	s.CounterVec(prometheus.CounterOpts{Name: "tollgate_test_b_total", Help: "b"}, []string{"x"})
	s.GaugeFunc(prometheus.GaugeOpts{Name: "tollgate_test_c", Help: "c"}, func() float64 { return 1 })
	s.HistogramVec(prometheus.HistogramOpts{Name: "tollgate_test_d_seconds", Help: "d"}, []string{"y"})
	return &s
}

func TestRegisterAllOrNone(t *testing.T) {
	reg := prometheus.NewRegistry()
	// A collector already there makes the set fail part way through.
	require.NoError(t, reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tollgate_test_c", Help: "c"}, func() float64 { return 2 })))

	err := build().Register("test", reg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "test: metrics: already registered")

	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 1, "the set's first collectors were unregistered again")
	assert.Equal(t, "tollgate_test_c", mfs[0].GetName())
}

func TestRegisterTwiceErrs(t *testing.T) {
	reg := prometheus.NewRegistry()
	require.NoError(t, build().Register("first", reg))
	err := build().Register("second", reg)
	require.Error(t, err, "a second instance on the same registry errs instead of panicking")
	assert.Contains(t, err.Error(), "second: metrics")
	require.Error(t, build().Register("nil", nil))
}

func TestCatalog(t *testing.T) {
	reg := metricset.NewRegistry()
	require.NoError(t, build().Register("test", reg))
	var names []string
	for _, s := range reg.Catalog() {
		names = append(names, s.Name+":"+s.Type)
	}
	assert.Equal(t, []string{"tollgate_test_a_total:counter", "tollgate_test_b_total:counter", "tollgate_test_c:gauge", "tollgate_test_d_seconds:histogram"}, names)
	assert.Equal(t, []string{"x"}, reg.Catalog()[1].Labels)

	// A failed set adds nothing to the catalog.
	require.Error(t, build().Register("again", reg))
	assert.Len(t, reg.Catalog(), 4)
}
