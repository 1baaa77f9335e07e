// Package otlptest is an OTLP/gRPC trace collector for tests: the
// collector's own TraceService (go.opentelemetry.io/proto/otlp) served over
// real gRPC on 127.0.0.1, keeping every span it receives and counting the
// connections made to it, so a test can tell that tracing off never dials.
package otlptest

import (
	"context"
	"encoding/hex"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Span is one received span, its ids in hex and its attributes as strings.
type Span struct {
	Name, TraceID, SpanID, ParentID string
	Service                         string
	Attrs                           map[string]string
	Error                           bool
}

// Collector receives spans. Safe for concurrent use.
type Collector struct {
	collectorpb.UnimplementedTraceServiceServer
	lis      *countingListener
	srv      *grpc.Server
	mu       sync.Mutex
	spans    []Span
	received int64
}

// maxKept bounds the spans a collector keeps (a benchmark sends millions);
// Received counts them all.
const maxKept = 10000

// Start serves a collector on a free loopback port until the test ends.
func Start(t testing.TB) *Collector {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("otlptest: listen: %v", err)
	}
	c := &Collector{lis: &countingListener{Listener: l}, srv: grpc.NewServer()}
	collectorpb.RegisterTraceServiceServer(c.srv, c)
	done := make(chan struct{})
	go func() { defer close(done); _ = c.srv.Serve(c.lis) }()
	t.Cleanup(func() { c.srv.Stop(); <-done })
	return c
}

// Addr is the collector's host:port.
func (c *Collector) Addr() string { return c.lis.Addr().String() }

// Connections is how many connections were made to the collector.
func (c *Collector) Connections() int64 { return c.lis.accepted.Load() }

// Spans returns the spans received so far.
func (c *Collector) Spans() []Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.spans)
}

// Received is how many spans the collector received, kept or not.
func (c *Collector) Received() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.received
}

// Named returns the received spans named name.
func (c *Collector) Named(name string) []Span {
	var out []Span
	for _, s := range c.Spans() {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// Export keeps the request's spans.
func (c *Collector) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	var got []Span
	for _, rs := range req.GetResourceSpans() {
		service := attrs(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				got = append(got, Span{Name: s.GetName(), TraceID: hex.EncodeToString(s.GetTraceId()),
					SpanID: hex.EncodeToString(s.GetSpanId()), ParentID: hex.EncodeToString(s.GetParentSpanId()),
					Service: service, Attrs: attrs(s.GetAttributes()),
					Error: s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR})
			}
		}
	}
	c.mu.Lock()
	c.received += int64(len(got))
	c.spans = append(c.spans, got[:min(len(got), max(0, maxKept-len(c.spans)))]...)
	c.mu.Unlock()
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

func attrs(kvs []*commonpb.KeyValue) map[string]string {
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		v := kv.GetValue()
		switch v.GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			out[kv.GetKey()] = v.GetStringValue()
		default:
			out[kv.GetKey()] = anyString(v)
		}
	}
	return out
}

func anyString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_BoolValue:
		if x.BoolValue {
			return "true"
		}
		return "false"
	}
	return v.String()
}

type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}
