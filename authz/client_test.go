package authz_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/tollgate/tollgate/authz"
)

// identityPolicy knows one client, team-a; defaults is its defaults block.
func identityPolicy(defaults string) string {
	return strings.Replace(serverPolicy, "defaults:\n  unknown_client: basic\n", "defaults:\n"+defaults+"\n", 1) + `
clients:
  team-a: { tier: basic }
`
}

// TestClientIdentity: who a call is charged to. serve --client beats
// Envoy's per-listener context extension, which beats the worker's header;
// ids are validated whoever set them (400 invalid_client); the policy can
// refuse calls that name no client (403 missing_client) or an unknown one.
func TestClientIdentity(t *testing.T) {
	tests := map[string]struct {
		defaults   string
		pinned     string // serve --client
		extension  string // Envoy's context extension "client"
		header     string // x-tollgate-client ("-": absent)
		wantStatus int    // 0: allowed
		wantBody   string
	}{
		"the header names a known client":          {defaults: "  unknown_client: deny", header: "team-a"},
		"the header names a stranger":              {defaults: "  unknown_client: deny", header: "stranger", wantStatus: http.StatusForbidden, wantBody: "unknown"},
		"the extension beats the header":           {defaults: "  unknown_client: deny", extension: "team-a", header: "stranger"},
		"the header cannot override the extension": {defaults: "  unknown_client: deny", extension: "stranger", header: "team-a", wantStatus: http.StatusForbidden, wantBody: `client \"stranger\"`},
		"serve --client beats both":                {defaults: "  unknown_client: deny", pinned: "team-a", extension: "stranger", header: "stranger"},
		"serve --client without a header":          {defaults: "  unknown_client: deny\n  missing_client: deny", pinned: "team-a", header: "-"},
		"no header, old default":                   {defaults: "  unknown_client: basic", header: "-"},
		"no header, missing_client: deny":          {defaults: "  unknown_client: basic\n  missing_client: deny", header: "-", wantStatus: http.StatusForbidden, wantBody: "names no client"},
		"no header, unknown_client: deny":          {defaults: "  unknown_client: deny", header: "-", wantStatus: http.StatusForbidden, wantBody: "unknown"},
		"an id with a space":                       {defaults: "  unknown_client: basic", header: "team a", wantStatus: http.StatusBadRequest, wantBody: "only A-Z a-z 0-9"},
		"an id too long":                           {defaults: "  unknown_client: basic", header: strings.Repeat("a", 129), wantStatus: http.StatusBadRequest, wantBody: "over the 128 allowed"},
		"the longest id":                           {defaults: "  unknown_client: basic", header: strings.Repeat("a", 128)},
		"a sub-client id":                          {defaults: "  unknown_client: basic", header: "acme/marketing:eu_1.x-y"},
		"a bad id in the extension":                {defaults: "  unknown_client: basic", extension: "a\nb", header: "team-a", wantStatus: http.StatusBadRequest, wantBody: "invalid_client"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ts := startServer(t, serverOpts{policy: identityPolicy(tc.defaults), config: func(c *authz.Config) { c.Client = tc.pinned }})
			req := chatCheck(tc.header, chatBody("gpt-4", 10, "hi"))
			if tc.header == "-" {
				delete(req.GetAttributes().GetRequest().GetHttp().GetHeaders(), "x-tollgate-client")
			}
			if tc.extension != "" {
				req.GetAttributes().ContextExtensions[authz.ContextClient] = tc.extension
			}
			resp, err := ts.auth.Check(context.Background(), req)
			require.NoError(t, err)
			if tc.wantStatus == 0 {
				assert.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode(), resp.GetDeniedResponse().GetBody())
				return
			}
			require.NotEqual(t, int32(code.Code_OK), resp.GetStatus().GetCode())
			assert.EqualValues(t, tc.wantStatus, resp.GetDeniedResponse().GetStatus().GetCode(), resp.GetDeniedResponse().GetBody())
			assert.Contains(t, resp.GetDeniedResponse().GetBody(), tc.wantBody)
		})
	}

	t.Run("serve --client is validated at start", func(t *testing.T) {
		cfg := authz.DefaultConfig()
		cfg.Client = "not valid!"
		require.ErrorContains(t, cfg.Validate(), "authz: client id \"not valid!\" holds \" \"")
	})
}
