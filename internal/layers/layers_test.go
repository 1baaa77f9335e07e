// Package layers holds the test that enforces Tollgate's layering (see
// DESIGN.md "Folders" and STYLE.md §1): a package imports only packages of
// a lower layer, and nothing below authz sees an Envoy type.
package layers

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const module = "github.com/tollgate/tollgate/"

// layerOf ranks every package of the module: an import must point to a
// strictly lower layer. The helpers under internal/ are shared and import
// nothing of the module above them. A new package must be placed here.
var layerOf = map[string]int{
	"internal/fakeclock": 0,
	"internal/metricset": 0,
	"internal/logtest":   0,
	"internal/procstat":  0,
	// OpenTelemetry: the tracer and its exporter, and the test collector.
	"internal/tracing":            0,
	"internal/otlptest":           0,
	"policy":                      1,
	"costing":                     2,
	"costing/optimize":            3,
	"limiter":                     3,
	"policy/watch":                3,
	"policy/rls":                  2,
	"limiter/memstore":            4,
	"limiter/redisstore":          4,
	"limiter/queue":               4,
	"limiter/respcache":           4,
	"internal/redistest":          4,
	"limiter/storetest":           5,
	"limiter/respcache/cachetest": 5,
	"cluster":                     6,
	"admission":                   7,
	"authz":                       8,
	// The decision log's writer, reader and replay (beside authz: both
	// sit on admission, neither imports the other).
	"admission/decisionlog": 8,
	"cmd/tollgate":          9,
	"cmd/fakeapi":           9,
	"cmd/barefloor":         9,
	// Packages of tests and configs only.
	"envoy":  9,
	"deploy": 9,
	"docs":   9,

	// Issue 11's end-to-end test: the provider look-alike, the Envoy
	// stand-in, and the test that drives the providers' SDKs through them.
	"internal/fakeapi":  0,
	"internal/envoysim": 9,
	"e2e":               10,
	// The demo (make demo): the Envoy stand-in and redis-server wired to
	// the real binaries.
	"cmd/demo": 10,
	// The soak: the built binary under the stand-in's and the fake's
	// traffic for minutes (make soak).
	"cmd/soak": 10,
	// Issue 17's transparent mode: the pod-local CA and the redirect
	// rules, standard library only.
	"internal/pki":      0,
	"internal/redirect": 0,
}

// envoyFree are the packages that must not import go-control-plane: all
// but the transport and the binaries.
func envoyFree(pkg string) bool {
	return layerOf[pkg] < layerOf["authz"]
}

type listed struct {
	ImportPath string
	Imports    []string
}

func TestLayering(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", module+"...").Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Fatalf("go list: %v: %s", err, ee.Stderr)
	}
	require.NoError(t, err)
	dec := json.NewDecoder(bytes.NewReader(out))
	seen := 0
	for {
		var p listed
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else {
			require.NoError(t, err)
		}
		name := strings.TrimPrefix(p.ImportPath, module)
		if name == "internal/layers" {
			continue
		}
		seen++
		layer, ok := layerOf[name]
		if !assert.True(t, ok, "package %s has no layer: place it in layerOf", name) {
			continue
		}
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, "github.com/envoyproxy/go-control-plane") && envoyFree(name) {
				t.Errorf("%s imports %s: nothing below authz sees an Envoy type", name, imp)
			}
			dep, ok := strings.CutPrefix(imp, module)
			if !ok {
				continue
			}
			if l, known := layerOf[dep]; known && l >= layer {
				t.Errorf("%s (layer %d) imports %s (layer %d): an import must point down", name, layer, dep, l)
			}
		}
	}
	require.Greater(t, seen, 10, "go list found the module's packages")
}
