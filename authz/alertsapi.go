package authz

import (
	"context"
	"net/http"
	"time"

	"github.com/tollgate/tollgate/admission"
)

// AlertsReply answers GET /admin/alerts: the alerts firing, evaluated in
// the process for operators without Prometheus, and the thresholds they
// were held to (the policy's alerts: section and queue.starvation_alert).
type AlertsReply struct {
	EvaluatedAt time.Time         `json:"evaluated_at"`
	Alerts      []admission.Alert `json:"alerts"`
	Thresholds  AlertThresholds   `json:"thresholds"`
	// StaleError says what the store could not tell this time: those
	// parts keep the values of the refresh before.
	StaleError string `json:"stale_error,omitempty"`
}

// AlertThresholds are the thresholds in force, as the policy writes them.
type AlertThresholds struct {
	PoolBelowPercent      int64  `json:"pool_below_percent"`
	BudgetAbovePercent    int64  `json:"budget_above_percent"`
	QueueAbove            int64  `json:"queue_above"`
	UpstreamErrorsPercent int64  `json:"upstream_errors_above_percent"`
	UpstreamWindow        string `json:"upstream_window"`
	StarvationAlert       string `json:"starvation_alert"`
	BudgetClients         int    `json:"budget_clients"`
	ForecastWindow        string `json:"forecast_window"`
}

// alertsRefreshTimeout bounds the store reads of one GET /admin/alerts.
const alertsRefreshTimeout = 2 * time.Second

func (s *Server) alertRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/alerts", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), alertsRefreshTimeout)
		defer cancel()
		err := s.svc.Refresh(ctx)
		snap := s.svc.Snapshot()
		th := snap.Thresholds
		rep := AlertsReply{EvaluatedAt: snap.At.UTC(), Alerts: s.svc.Alerts(), Thresholds: AlertThresholds{
			PoolBelowPercent: th.PoolBelow, BudgetAbovePercent: th.BudgetAbove, QueueAbove: th.QueueAbove,
			UpstreamErrorsPercent: th.UpstreamErrorsAbove, UpstreamWindow: th.UpstreamWindow.String(),
			StarvationAlert: snap.StarvationAlert.String(), BudgetClients: th.BudgetClients, ForecastWindow: th.ForecastWindow.String()}}
		if rep.Alerts == nil {
			rep.Alerts = []admission.Alert{}
		}
		if err != nil {
			rep.StaleError = err.Error()
		}
		writeJSON(w, http.StatusOK, rep)
	})
}
