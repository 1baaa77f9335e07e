// Package tracing holds Tollgate's OpenTelemetry tracing: the OTLP/gRPC
// exporter and its sampler, and the few helpers the service and the
// transport start their spans with. Tracing is off unless an endpoint is
// configured, and off costs nothing measurable: a nil *Tracer starts no
// span, reads no header and allocates nothing (the no-op span stands in).
// It takes the parent of a span from W3C trace context only (traceparent,
// tracestate), the form Envoy's OpenTelemetry tracer sends.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/metadata"
)

// Config configures tracing.
type Config struct {
	// Endpoint is the OTLP/gRPC collector, host:port; empty: tracing off.
	Endpoint string
	// Insecure sends spans without TLS (a collector on the node or in the
	// pod); otherwise TLS with the system's roots.
	Insecure bool
	// SampleRatio is the share of traces started here that are kept, in
	// [0, 1]; a call whose parent (Envoy's span) says sampled or not
	// follows its parent.
	SampleRatio float64
	// ServiceName is the resource's service.name.
	ServiceName string
	// ExportTimeout bounds one export to the collector.
	ExportTimeout time.Duration
}

// DefaultConfig is tracing off, and 1% of root traces when turned on.
func DefaultConfig() Config {
	return Config{SampleRatio: 0.01, ServiceName: "tollgate", ExportTimeout: 10 * time.Second}
}

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if math.IsNaN(c.SampleRatio) || c.SampleRatio < 0 || c.SampleRatio > 1 {
		errs = append(errs, fmt.Errorf("tracing: sample ratio %v is not within [0, 1]", c.SampleRatio))
	}
	if c.Endpoint != "" {
		host, port, err := net.SplitHostPort(c.Endpoint)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || host == "" || perr != nil || n == 0 || strings.Contains(c.Endpoint, "/") {
			errs = append(errs, fmt.Errorf("tracing: OTLP endpoint %q: want host:port (no scheme, no path)", c.Endpoint))
		}
	}
	if c.ExportTimeout <= 0 {
		errs = append(errs, fmt.Errorf("tracing: export timeout %v must be positive", c.ExportTimeout))
	}
	return errors.Join(errs...)
}

// Tracer starts Tollgate's spans and owns the exporter. A nil *Tracer is
// tracing off; every method is safe on it and does nothing. Safe for
// concurrent use.
type Tracer struct {
	tr       trace.Tracer
	provider *sdktrace.TracerProvider
}

// off is the span every helper returns when nothing is traced: the no-op
// span, an empty struct, so that returning it allocates nothing.
var off trace.Span = noop.Span{}

// New builds the exporter and the tracer; with no endpoint it returns nil
// (off) and opens nothing. The exporter connects lazily, so a collector
// that is down costs dropped spans, never a failed start. Shutdown flushes
// it.
func New(ctx context.Context, cfg Config) (*Tracer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Endpoint == "" {
		return nil, nil
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.Endpoint), otlptracegrpc.WithTimeout(cfg.ExportTimeout)}
	if cfg.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", cfg.Endpoint, err)
	}
	name := cfg.ServiceName
	if name == "" {
		name = "tollgate"
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithExportTimeout(cfg.ExportTimeout)),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", name))),
	)
	return &Tracer{tr: tp.Tracer("github.com/tollgate/tollgate"), provider: tp}, nil
}

// On reports whether tracing is on.
func (t *Tracer) On() bool { return t != nil }

// Shutdown exports the spans still buffered and closes the exporter, within
// ctx: a collector that does not answer costs the spans, never a hung
// shutdown. Idempotent.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if err := t.provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing: flushing spans: %w", err)
	}
	return nil
}

// Start begins a span under ctx's span (or a new trace, sampled at the
// configured ratio). Callers set attributes only when span.IsRecording().
func (t *Tracer) Start(ctx context.Context, name string, kind trace.SpanKind) (context.Context, trace.Span) {
	if t == nil {
		return ctx, off
	}
	return t.tr.Start(ctx, name, trace.WithSpanKind(kind))
}

// Child begins a span only inside a recording one: a store call or a wait
// outside a sampled check costs a context lookup, nothing more.
func (t *Tracer) Child(ctx context.Context, name string) (context.Context, trace.Span) {
	if t == nil || !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, off
	}
	return t.tr.Start(ctx, name, trace.WithSpanKind(trace.SpanKindInternal))
}

var w3c propagation.TraceContext

// FromGRPC takes the parent span from the gRPC call's metadata, where
// Envoy's gRPC client puts its own span for the ext_authz, ext_proc or
// rate limit call when its tracing is on.
func (t *Tracer) FromGRPC(ctx context.Context) context.Context {
	if t == nil {
		return ctx
	}
	return w3c.Extract(ctx, grpcCarrier{ctx})
}

// FromHeaders takes the parent span from a request's headers (keys in
// lower case), unless ctx has one already (Envoy's, from FromGRPC).
func (t *Tracer) FromHeaders(ctx context.Context, h map[string]string) context.Context {
	if t == nil || trace.SpanContextFromContext(ctx).IsValid() || h["traceparent"] == "" {
		return ctx
	}
	return w3c.Extract(ctx, propagation.MapCarrier(h))
}

// FromHTTP takes the parent span from an HTTP request's headers.
func (t *Tracer) FromHTTP(ctx context.Context, h http.Header) context.Context {
	if t == nil {
		return ctx
	}
	return w3c.Extract(ctx, propagation.HeaderCarrier(h))
}

// grpcCarrier reads trace context from incoming gRPC metadata.
type grpcCarrier struct{ ctx context.Context }

func (c grpcCarrier) Get(key string) string {
	if v := metadata.ValueFromIncomingContext(c.ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}
func (grpcCarrier) Set(string, string) {}
func (grpcCarrier) Keys() []string     { return nil }
