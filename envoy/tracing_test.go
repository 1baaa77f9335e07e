package envoy_test

import (
	"regexp"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// yamlBlock finds the fenced YAML blocks of a Markdown page.
var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

// decodeStrict reads an Envoy YAML fragment into msg the way Envoy does,
// unknown fields and "@type"s being errors.
func decodeStrict(t *testing.T, data []byte, msg proto.Message) {
	t.Helper()
	js, err := yaml.YAMLToJSON(data)
	require.NoError(t, err)
	require.NoError(t, protojson.Unmarshal(js, msg))
}

// TestTracingDocSnippets: the two fragments docs/tracing.md gives for
// turning on Envoy's tracing (the connection manager's tracing block, the
// collector's cluster) are valid Envoy config, typed_configs included,
// and point at each other.
func TestTracingDocSnippets(t *testing.T) {
	blocks := yamlBlock.FindAllSubmatch(readFile(t, "../docs/tracing.md"), -1)
	require.Len(t, blocks, 2, "docs/tracing.md: the tracing block and the collector cluster")

	var hcm hcmv3.HttpConnectionManager
	decodeStrict(t, blocks[0][1], &hcm)
	tr := hcm.GetTracing()
	require.NotNil(t, tr)
	require.NoError(t, validateDeep(tr, "tracing"))
	var otel tracev3.OpenTelemetryConfig
	require.NoError(t, tr.GetProvider().GetTypedConfig().UnmarshalTo(&otel))
	assert.Equal(t, "envoy.tracers.opentelemetry", tr.GetProvider().GetName())
	assert.Positive(t, tr.GetRandomSampling().GetValue())

	var cl clusterv3.Cluster
	decodeStrict(t, blocks[1][1], &cl)
	require.NoError(t, validateDeep(&cl, "cluster"))
	assert.Equal(t, otel.GetGrpcService().GetEnvoyGrpc().GetClusterName(), cl.GetName(), "the tracer sends to the cluster")
	assert.Contains(t, cl.GetTypedExtensionProtocolOptions(), httpProtoOpts, "OTLP/gRPC needs HTTP/2 to the collector")
}
