package tracing_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	"github.com/tollgate/tollgate/internal/otlptest"
	"github.com/tollgate/tollgate/internal/tracing"
)

const (
	parentTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	parentSpan  = "00f067aa0ba902b7"
	otherSpan   = "b7ad6b7169203331"
)

func tp(span, flags string) string { return "00-" + parentTrace + "-" + span + "-" + flags }

func TestConfigValidate(t *testing.T) {
	tests := map[string]struct {
		change func(*tracing.Config)
		err    string
	}{
		"default (off)":     {change: func(*tracing.Config) {}},
		"on":                {change: func(c *tracing.Config) { c.Endpoint = "otel-collector:4317" }},
		"ratio 0":           {change: func(c *tracing.Config) { c.SampleRatio = 0 }},
		"ratio 1":           {change: func(c *tracing.Config) { c.SampleRatio = 1 }},
		"ratio above 1":     {change: func(c *tracing.Config) { c.SampleRatio = 1.01 }, err: "sample ratio"},
		"negative ratio":    {change: func(c *tracing.Config) { c.SampleRatio = -1 }, err: "sample ratio"},
		"a URL":             {change: func(c *tracing.Config) { c.Endpoint = "http://collector:4317" }, err: "want host:port"},
		"no port":           {change: func(c *tracing.Config) { c.Endpoint = "collector" }, err: "want host:port"},
		"port not a number": {change: func(c *tracing.Config) { c.Endpoint = "collector:otlp" }, err: "want host:port"},
		"no host":           {change: func(c *tracing.Config) { c.Endpoint = ":4317" }, err: "want host:port"},
		"no timeout":        {change: func(c *tracing.Config) { c.ExportTimeout = 0 }, err: "export timeout"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c := tracing.DefaultConfig()
			tc.change(&c)
			err := c.Validate()
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.err)
			_, nerr := tracing.New(context.Background(), c)
			require.ErrorContains(t, nerr, tc.err, "New validates")
		})
	}
}

// TestOff: no endpoint is no tracer, and every helper on it hands the
// context back as it came, with the no-op span, allocating nothing.
func TestOff(t *testing.T) {
	tr, err := tracing.New(context.Background(), tracing.DefaultConfig())
	require.NoError(t, err)
	require.Nil(t, tr)
	require.False(t, tr.On())
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", tp(parentSpan, "01")))
	h := map[string]string{"traceparent": tp(parentSpan, "01")}
	hh := http.Header{"Traceparent": {tp(parentSpan, "01")}}
	allocs := testing.AllocsPerRun(100, func() {
		c := tr.FromHeaders(tr.FromGRPC(ctx), h)
		c = tr.FromHTTP(c, hh)
		c, span := tr.Start(c, "x", trace.SpanKindServer)
		if span.IsRecording() || c != ctx {
			t.Fatal("off traced")
		}
		_, child := tr.Child(c, "y")
		child.End()
		span.End()
	})
	assert.Zero(t, allocs)
	assert.NoError(t, tr.Shutdown(context.Background()))
}

func newTracer(t *testing.T, ratio float64) (*tracing.Tracer, *otlptest.Collector) {
	t.Helper()
	col := otlptest.Start(t)
	c := tracing.DefaultConfig()
	c.Endpoint, c.Insecure, c.SampleRatio = col.Addr(), true, ratio
	tr, err := tracing.New(context.Background(), c)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr, col
}

// TestParents: the gRPC metadata's span wins over the request's header;
// the header serves when the metadata has none; a malformed one is
// ignored (a new trace).
func TestParents(t *testing.T) {
	tr, _ := newTracer(t, 1)
	md := func(v string) context.Context {
		return metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", v))
	}
	tests := map[string]struct {
		ctx        context.Context
		header     string
		wantParent string // "": a root span
	}{
		"metadata":             {ctx: md(tp(parentSpan, "01")), wantParent: parentSpan},
		"metadata over header": {ctx: md(tp(parentSpan, "01")), header: tp(otherSpan, "01"), wantParent: parentSpan},
		"header":               {ctx: context.Background(), header: tp(otherSpan, "01"), wantParent: otherSpan},
		"malformed metadata":   {ctx: md("00-zz-yy-01"), header: tp(otherSpan, "01"), wantParent: otherSpan},
		"malformed header":     {ctx: context.Background(), header: "garbage"},
		"none":                 {ctx: context.Background()},
		"all-zero trace id":    {ctx: context.Background(), header: "00-00000000000000000000000000000000-" + parentSpan + "-01"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := map[string]string{}
			if tc.header != "" {
				h["traceparent"] = tc.header
			}
			ctx, span := tr.Start(tr.FromHeaders(tr.FromGRPC(tc.ctx), h), "check", trace.SpanKindServer)
			defer span.End()
			parent := trace.SpanContextFromContext(tr.FromHeaders(tr.FromGRPC(tc.ctx), h))
			if tc.wantParent == "" {
				assert.False(t, parent.IsValid())
				return
			}
			assert.Equal(t, tc.wantParent, parent.SpanID().String())
			assert.Equal(t, parentTrace, trace.SpanContextFromContext(ctx).TraceID().String())
		})
	}
}

// TestSampling: a parent's decision is followed whatever the ratio; a
// root is kept at the ratio; children are spans only under a recording
// span.
func TestSampling(t *testing.T) {
	never, _ := newTracer(t, 0)
	for name, tc := range map[string]struct {
		flags     string
		recording bool
	}{"sampled parent": {"01", true}, "unsampled parent": {"00", false}} {
		t.Run(name, func(t *testing.T) {
			ctx := never.FromHeaders(context.Background(), map[string]string{"traceparent": tp(parentSpan, tc.flags)})
			ctx, span := never.Start(ctx, "check", trace.SpanKindServer)
			defer span.End()
			assert.Equal(t, tc.recording, span.IsRecording())
			_, child := never.Child(ctx, "store")
			defer child.End()
			assert.Equal(t, tc.recording, child.IsRecording())
		})
	}
	_, root := never.Start(context.Background(), "check", trace.SpanKindServer)
	assert.False(t, root.IsRecording(), "ratio 0 keeps no root")
	_, orphan := never.Child(context.Background(), "store")
	assert.False(t, orphan.IsRecording(), "no child without a recording parent")

	always, _ := newTracer(t, 1)
	_, root = always.Start(context.Background(), "check", trace.SpanKindServer)
	assert.True(t, root.IsRecording(), "ratio 1 keeps every root")
	root.End()
}

// TestShutdownFlushes: spans buffered by the batcher reach the collector
// by the time Shutdown returns, and a second Shutdown is harmless.
func TestShutdownFlushes(t *testing.T) {
	tr, col := newTracer(t, 1)
	for range 3 {
		_, span := tr.Start(context.Background(), "check", trace.SpanKindServer)
		span.End()
	}
	require.NoError(t, tr.Shutdown(context.Background()))
	assert.Len(t, col.Named("check"), 3)
	assert.Positive(t, col.Connections())
	assert.NoError(t, tr.Shutdown(context.Background()))
}

// FuzzFromHeaders: whatever a worker writes in trace headers, extracting
// it never panics, and a parent it yields is a valid one.
func FuzzFromHeaders(f *testing.F) {
	for _, s := range []string{tp(parentSpan, "01"), tp(parentSpan, "00"), "", "00-", "ff-" + parentTrace + "-" + parentSpan + "-01",
		"00-" + parentTrace + "-0000000000000000-01", "00-" + parentTrace + "-" + parentSpan + "-01-extra"} {
		f.Add(s, "vendor=value")
	}
	col := otlptest.Start(f)
	c := tracing.DefaultConfig()
	c.Endpoint, c.Insecure, c.SampleRatio = col.Addr(), true, 0
	tr, err := tracing.New(context.Background(), c)
	require.NoError(f, err)
	f.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	f.Fuzz(func(t *testing.T, parent, state string) {
		ctx := tr.FromHeaders(context.Background(), map[string]string{"traceparent": parent, "tracestate": state})
		if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
			require.True(t, sc.IsValid())
		}
		_, span := tr.Start(ctx, "check", trace.SpanKindServer)
		span.End()
	})
}
