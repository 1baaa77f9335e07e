package authz_test

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/code"
	"sigs.k8s.io/yaml"

	"github.com/tollgate/tollgate/authz"
)

// contextExtensions collects every context_extensions map of an Envoy
// YAML config, wherever it sits.
func contextExtensions(v any) []map[string]string {
	var out []map[string]string
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if k == "context_extensions" {
				m := map[string]string{}
				for mk, mv := range e.(map[string]any) {
					m[mk], _ = mv.(string)
				}
				out = append(out, m)
				continue
			}
			out = append(out, contextExtensions(e)...)
		}
	case []any:
		for _, e := range x {
			out = append(out, contextExtensions(e)...)
		}
	}
	return out
}

// TestTransparentClientIgnoresWorkerHeader: in transparent mode the client
// is the pod's. Each route of envoy/sidecar-transparent.yaml sends its
// context extensions with the check; whatever x-tollgate-client the worker
// writes, the call is charged to the client the config names: a stranger's
// name does not get the call refused, and a known client's name does not
// get it let through when the pod's client is refused.
func TestTransparentClientIgnoresWorkerHeader(t *testing.T) {
	raw, err := os.ReadFile("../envoy/sidecar-transparent.yaml")
	require.NoError(t, err)
	var cfg any
	require.NoError(t, yaml.Unmarshal(raw, &cfg))
	exts := contextExtensions(cfg)
	require.NotEmpty(t, exts)

	for _, ext := range exts {
		if ext[authz.ContextUpstreamHost] != "api.openai.com" {
			continue // the test policy routes OpenAI; every route is alike (envoy/transparent_test.go)
		}
		podClient := ext[authz.ContextClient]
		require.NotEmpty(t, podClient, "the config pins the client")

		tests := map[string]struct {
			known      string // the one client the policy knows; unknown ones are refused
			header     string // what the worker writes
			wantStatus int
		}{
			"a stranger's name changes nothing":           {known: podClient, header: "stranger"},
			"no header changes nothing":                   {known: podClient, header: ""},
			"a known client's name is not taken":          {known: "team-a", header: "team-a", wantStatus: http.StatusForbidden},
			"the pod's own name from the worker is moot":  {known: "team-a", header: podClient, wantStatus: http.StatusForbidden},
			"the pod's client with the header set anyway": {known: podClient, header: podClient},
		}
		for name, tc := range tests {
			t.Run(name, func(t *testing.T) {
				pol := strings.Replace(serverPolicy, "  unknown_client: basic\n", "  unknown_client: deny\n", 1) + "clients:\n  " + tc.known + ": { tier: basic }\n"
				ts := startServer(t, serverOpts{policy: pol})
				req := chatCheck(tc.header, chatBody("gpt-4", 10, "hi"))
				for k, v := range ext {
					req.GetAttributes().ContextExtensions[k] = v
				}
				resp, err := ts.auth.Check(context.Background(), req)
				require.NoError(t, err)
				if tc.wantStatus == 0 {
					assert.Equal(t, int32(code.Code_OK), resp.GetStatus().GetCode(), resp.GetDeniedResponse().GetBody())
					return
				}
				require.NotEqual(t, int32(code.Code_OK), resp.GetStatus().GetCode())
				assert.EqualValues(t, tc.wantStatus, resp.GetDeniedResponse().GetStatus().GetCode())
				assert.Contains(t, resp.GetDeniedResponse().GetBody(), podClient, "refused as the pod's client")
			})
		}
	}
}
