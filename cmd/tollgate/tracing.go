package main

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/tollgate/tollgate/internal/tracing"
)

// tracingFlushTimeout bounds the export of the spans still buffered at
// shutdown: a collector that does not answer costs those spans, never a
// stuck exit.
const tracingFlushTimeout = 5 * time.Second

// openTracing builds the tracer from the flags (nil when --otlp-endpoint is
// empty). Only the flag turns tracing on: a pod whose environment names a
// collector for other containers (OTEL_EXPORTER_OTLP_ENDPOINT) does not
// start sampling Tollgate's hot path. The exporter library still reads the
// rest of the OTEL_EXPORTER_OTLP_* variables (headers, certificate,
// compression) and the batch processor OTEL_BSP_*.
func openTracing(ctx context.Context, cfg tracing.Config, log *slog.Logger) (*tracing.Tracer, error) {
	tr, err := tracing.New(ctx, cfg)
	if err != nil || !tr.On() {
		return tr, err
	}
	// The SDK reports failed exports through OpenTelemetry's process-wide
	// handler; the binary owns the process, so it sends them to the log.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: spans not exported", slog.Any("error", err))
	}))
	log.Info("tracing on", slog.String("otlp_endpoint", cfg.Endpoint), slog.Float64("sample_ratio", cfg.SampleRatio),
		slog.Bool("insecure", cfg.Insecure))
	return tr, nil
}

// closeTracing flushes and closes the exporter within tracingFlushTimeout.
func closeTracing(tr *tracing.Tracer) error {
	ctx, cancel := context.WithTimeout(context.Background(), tracingFlushTimeout)
	defer cancel()
	return tr.Shutdown(ctx)
}
