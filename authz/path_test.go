package authz_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/authz"
)

// TestPathsAreCanonical: the spellings of issue 11 that used to match no
// route, and so passed unmetered under unmatched_route: allow, are metered
// on the route they name (the reservation and route headers say so); a
// path in the wrong letter case, or with an escaped slash, is refused with
// 400 invalid_request, whatever unmatched_route says.
func TestPathsAreCanonical(t *testing.T) {
	policy := strings.Replace(serverPolicy, "defaults:\n", "defaults:\n  unmatched_route: allow\n", 1)
	ts := startServer(t, serverOpts{policy: policy, config: func(c *authz.Config) { c.Settlement = admission.SettleDeferred }})

	tests := map[string]struct {
		path      string
		wantRoute string // "": refused
		wantBody  string
	}{
		"canonical":            {path: "/v1/chat/completions", wantRoute: "openai"},
		"double slash":         {path: "//v1/chat/completions", wantRoute: "openai"},
		"dot-dot":              {path: "/x/../v1/chat/completions", wantRoute: "openai"},
		"escaped unreserved":   {path: "/%76%31/chat/completions", wantRoute: "openai"},
		"with a query":         {path: "/v1//chat/completions?x=1", wantRoute: "openai"},
		"upper-case prefix":    {path: "/V1/chat/completions", wantBody: "only in letter case"},
		"escaped slash":        {path: "/v1%2Fchat/completions", wantBody: "escaped slash"},
		"malformed escape":     {path: "/v1/chat%zz", wantBody: "malformed percent escape"},
		"elsewhere: unmatched": {path: "/health", wantRoute: "-"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			req := chatCheck("team-a", chatBody("gpt-4", 10, "hi"))
			h := req.GetAttributes().GetRequest().GetHttp()
			h.Path, h.Headers[":path"] = tc.path, tc.path
			resp, err := ts.auth.Check(context.Background(), req)
			require.NoError(t, err)
			switch tc.wantRoute {
			case "":
				require.NotEqual(t, int32(code.Code_OK), resp.GetStatus().GetCode())
				assert.EqualValues(t, http.StatusBadRequest, resp.GetDeniedResponse().GetStatus().GetCode())
				assert.Contains(t, resp.GetDeniedResponse().GetBody(), tc.wantBody)
			case "-": // not a route of the policy: unmatched_route: allow lets it go, unmetered
				require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode())
				assert.Empty(t, okHeader(resp.GetOkResponse().GetHeaders(), authz.HeaderRoute))
			default:
				require.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode(), resp.GetDeniedResponse().GetBody())
				assert.Equal(t, tc.wantRoute, okHeader(resp.GetOkResponse().GetHeaders(), authz.HeaderRoute))
				assert.NotEmpty(t, okHeader(resp.GetOkResponse().GetHeaders(), authz.HeaderReservation), "metered: a reservation is held")
			}
		})
	}
}

// okHeader returns the value of the request header an allowed check sets.
func okHeader(hs []*corev3.HeaderValueOption, name string) string {
	for _, h := range hs {
		if h.GetHeader().GetKey() == name {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}
