package authz

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/tollgate/tollgate/admission"
)

// maxEstimateBody bounds the body /api/estimate reads (Envoy sends Check at
// most 256 KiB; an estimate may look at a little more).
const maxEstimateBody = 4 << 20

func (s *Server) estimateRoute(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/estimate", s.estimate)
}

// estimate answers POST /api/estimate and its aliases from the seed's API,
// POST /api/resources/estimate and POST /api/cost/estimate.
func (s *Server) estimate(w http.ResponseWriter, r *http.Request) {
	{
		target := r.URL.Query().Get("url")
		if target == "" {
			writeJSON(w, http.StatusBadRequest, apiError{"give the call's URL: POST /api/estimate?url=https://api.openai.com/v1/chat/completions with its body"})
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxEstimateBody+1))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{"reading the body: " + err.Error()})
			return
		}
		if len(body) > maxEstimateBody {
			writeJSON(w, http.StatusRequestEntityTooLarge, apiError{fmt.Sprintf("the body is over %d bytes", maxEstimateBody)})
			return
		}
		ct := r.Header.Get("Content-Type")
		if strings.HasPrefix(ct, "text/plain") { // curl --data-binary without -H
			ct = ""
		}
		rep, err := admission.EstimateCall(s.svc.Policy(), s.svc.Estimator(), target, ct, body)
		switch {
		case errors.Is(err, admission.ErrNoRoute):
			writeJSON(w, http.StatusNotFound, apiError{err.Error()})
		case err != nil:
			writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
		default:
			writeJSON(w, http.StatusOK, rep)
		}
	}
}
