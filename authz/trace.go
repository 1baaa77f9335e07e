package authz

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tollgate/tollgate/admission"
)

// Span names of the transport; docs/tracing.md lists them with their
// attributes. Attributes are codes, names and numbers: never a body, a
// header's value or a token.
const (
	spanCheck = "tollgate.check"
	spanRLS   = "tollgate.rls"
)

// endCheck describes a check's verdict on its span, and ends it.
func endCheck(span trace.Span, transport string, v *admission.Verdict) {
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("tollgate.transport", transport),
			attribute.String("tollgate.request_id", v.RequestID),
			attribute.String("tollgate.decision", string(v.Outcome)),
			attribute.String("tollgate.reason", v.Reason),
			attribute.String("tollgate.route", v.Route),
			attribute.String("tollgate.client", v.Client),
			attribute.String("tollgate.tier", v.Tier),
			attribute.String("tollgate.pool", v.Pool),
			attribute.String("tollgate.class", v.Class.String()),
			attribute.Int64("tollgate.estimate_nano_usd", int64(v.Estimate.Cost)),
			attribute.Int64("tollgate.queue.waited_ms", v.QueueWait.Milliseconds()),
		)
		if v.Outcome == admission.OutcomeError {
			span.SetStatus(codes.Error, v.Reason)
		}
	}
	span.End()
}

// endRLS describes a rate limit decision on its span, and ends it.
func endRLS(span trace.Span, domain string, descriptors int, v *admission.RateLimitVerdict, err error) {
	if span.IsRecording() {
		span.SetAttributes(attribute.String("tollgate.rls.domain", domain),
			attribute.Int("tollgate.rls.descriptors", descriptors), attribute.Bool("tollgate.rls.over", v.Over))
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
	}
	span.End()
}
