package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/tollgate/tollgate/policy"
)

const (
	k8sBase    = "k8s/base"
	k8sOverlay = "k8s/overlays/example"
)

// podMonitor mirrors the fields of monitoring.coreos.com/v1 PodMonitor the
// manifests use (the Prometheus Operator's CRD is not in k8s.io/api); a
// field not listed here is an error, as for the built-in kinds.
type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector            metav1.LabelSelector `json:"selector"`
		NamespaceSelector   *struct{ Any bool }  `json:"namespaceSelector,omitempty"`
		PodMetricsEndpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// kustomization is the part of kustomize's Kustomization the manifests
// use, decoded strictly: a field kustomize has but this test does not
// model is refused rather than ignored.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
	ConfigMapGenerator []struct {
		Name     string   `json:"name"`
		Behavior string   `json:"behavior"`
		Files    []string `json:"files"`
		Options  struct {
			DisableNameSuffixHash bool `json:"disableNameSuffixHash"`
		} `json:"options"`
	} `json:"configMapGenerator"`
	Patches []struct {
		Path string `json:"path"`
	} `json:"patches"`
}

// decodeStrict decodes one YAML document into v: unknown fields are errors.
func decodeStrict(doc []byte, v any) error {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// documents splits a multi-document YAML file.
func documents(t *testing.T, path string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var out [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			out = append(out, []byte(d))
		}
	}
	return out
}

// typed returns an empty value of a kind's Go type.
func typed(kind string) (any, bool) {
	switch kind {
	case "Deployment":
		return &appsv1.Deployment{}, true
	case "Service":
		return &corev1.Service{}, true
	case "ConfigMap":
		return &corev1.ConfigMap{}, true
	case "NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "PodMonitor":
		return &podMonitor{}, true
	}
	return nil, false
}

// object is one manifest as a generic map, as kustomize handles it.
type object map[string]any

func (o object) kind() string { s, _ := o["kind"].(string); return s }
func (o object) name() string {
	m, _ := o["metadata"].(map[string]any)
	s, _ := m["name"].(string)
	return s
}

func toObject(t *testing.T, doc []byte) object {
	t.Helper()
	var o object
	require.NoError(t, yaml.Unmarshal(doc, &o))
	return o
}

// build does what `kustomize build dir` does for the features these
// manifests use: resources (files and directories, recursively),
// configMapGenerator (with behavior replace; names are left without the
// content hash), strategic-merge patches (maps merge, lists of named
// entries merge by name, other lists replace), images and namespace.
func build(t *testing.T, dir string) []object {
	t.Helper()
	var k kustomization
	require.NoError(t, decodeStrict(readFile(t, filepath.Join(dir, "kustomization.yaml")), &k), "%s/kustomization.yaml", dir)
	assert.Equal(t, "kustomize.config.k8s.io/v1beta1", k.APIVersion)
	assert.Equal(t, "Kustomization", k.Kind)
	var objs []object
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		st, err := os.Stat(p)
		require.NoError(t, err, "%s: resource %s", dir, r)
		if st.IsDir() {
			objs = append(objs, build(t, p)...)
			continue
		}
		for _, d := range documents(t, p) {
			objs = append(objs, toObject(t, d))
		}
	}
	for _, g := range k.ConfigMapGenerator {
		data := map[string]any{}
		for _, f := range g.Files {
			key, file, ok := strings.Cut(f, "=")
			if !ok {
				key, file = filepath.Base(f), f
			}
			data[key] = string(readFile(t, filepath.Join(dir, file)))
		}
		cm := object{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": g.Name}, "data": data}
		i := slices.IndexFunc(objs, func(o object) bool { return o.kind() == "ConfigMap" && o.name() == g.Name })
		switch g.Behavior {
		case "replace":
			require.NotEqual(t, -1, i, "%s: replaces ConfigMap %s, which the resources do not have", dir, g.Name)
			objs[i] = cm
		case "", "create":
			require.Equal(t, -1, i, "%s: ConfigMap %s twice", dir, g.Name)
			objs = append(objs, cm)
		default:
			require.Failf(t, "behavior", "%s: %s", g.Name, g.Behavior)
		}
	}
	for _, p := range k.Patches {
		for _, d := range documents(t, filepath.Join(dir, p.Path)) {
			patch := toObject(t, d)
			i := slices.IndexFunc(objs, func(o object) bool { return o.kind() == patch.kind() && o.name() == patch.name() })
			require.NotEqual(t, -1, i, "%s: patch %s: no %s %s", dir, p.Path, patch.kind(), patch.name())
			objs[i] = object(merge(map[string]any(objs[i]), map[string]any(patch)).(map[string]any))
		}
	}
	for _, o := range objs {
		if k.Namespace != "" {
			o["metadata"].(map[string]any)["namespace"] = k.Namespace
		}
		if o.kind() != "Deployment" {
			continue
		}
		spec := o["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
		for _, list := range []string{"initContainers", "containers"} {
			cs, _ := spec[list].([]any)
			for _, c := range cs {
				c := c.(map[string]any)
				name, tag, _ := strings.Cut(c["image"].(string), ":")
				for _, img := range k.Images {
					if img.Name == name {
						if img.NewName != "" {
							name = img.NewName
						}
						if img.NewTag != "" {
							tag = img.NewTag
						}
					}
				}
				c["image"] = name + ":" + tag
			}
		}
	}
	return objs
}

// merge is a strategic merge patch for the shapes used here.
func merge(base, patch any) any {
	pm, ok := patch.(map[string]any)
	bm, ok2 := base.(map[string]any)
	if ok && ok2 {
		out := map[string]any{}
		for k, v := range bm {
			out[k] = v
		}
		for k, v := range pm {
			out[k] = merge(bm[k], v)
		}
		return out
	}
	pl, ok := patch.([]any)
	bl, ok2 := base.([]any)
	if ok && ok2 && named(pl) && named(bl) {
		out := slices.Clone(bl)
		for _, p := range pl {
			i := slices.IndexFunc(out, func(b any) bool { return b.(map[string]any)["name"] == p.(map[string]any)["name"] })
			if i < 0 {
				out = append(out, p)
			} else {
				out[i] = merge(out[i], p)
			}
		}
		return out
	}
	return patch
}

func named(l []any) bool {
	for _, e := range l {
		m, ok := e.(map[string]any)
		if !ok || m["name"] == nil {
			return false
		}
	}
	return len(l) > 0
}

// decoded is a built kustomization decoded strictly into the API types.
type decoded struct {
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	configMaps  map[string]*corev1.ConfigMap
	netpols     []*networkingv1.NetworkPolicy
	pdbs        []*policyv1.PodDisruptionBudget
	monitors    []*podMonitor
}

func decodeAll(t *testing.T, objs []object) decoded {
	t.Helper()
	d := decoded{deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{}, configMaps: map[string]*corev1.ConfigMap{}}
	for _, o := range objs {
		v, ok := typed(o.kind())
		require.True(t, ok, "kind %s (%s) has no Go type in this test", o.kind(), o.name())
		doc, err := json.Marshal(o)
		require.NoError(t, err)
		require.NoError(t, decodeStrict(doc, v), "%s %s", o.kind(), o.name())
		switch x := v.(type) {
		case *appsv1.Deployment:
			d.deployments[x.Name] = x
		case *corev1.Service:
			d.services[x.Name] = x
		case *corev1.ConfigMap:
			d.configMaps[x.Name] = x
		case *networkingv1.NetworkPolicy:
			d.netpols = append(d.netpols, x)
		case *policyv1.PodDisruptionBudget:
			d.pdbs = append(d.pdbs, x)
		case *podMonitor:
			d.monitors = append(d.monitors, x)
		}
	}
	return d
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// TestK8sStrictDecoding: every file under deploy/k8s, document by document,
// and each kustomization built, decode strictly into the API types; and the
// decoder does refuse an unknown field.
func TestK8sStrictDecoding(t *testing.T) {
	err := filepath.WalkDir("k8s", func(path string, e os.DirEntry, err error) error {
		require.NoError(t, err)
		if e.IsDir() || !strings.HasSuffix(path, ".yaml") || e.Name() == "kustomization.yaml" ||
			strings.Contains(path, "/envoy/") || strings.Contains(path, "/policy/") || e.Name() == "policy.yaml" {
			return nil
		}
		for i, doc := range documents(t, path) {
			o := toObject(t, doc)
			v, ok := typed(o.kind())
			if assert.True(t, ok, "%s #%d: kind %q", path, i, o.kind()) {
				assert.NoError(t, decodeStrict(doc, v), "%s #%d", path, i)
			}
		}
		return nil
	})
	require.NoError(t, err)
	for _, dir := range []string{k8sBase, k8sOverlay} {
		t.Run(dir, func(t *testing.T) { decodeAll(t, build(t, dir)) })
	}
	t.Run("an unknown field is refused", func(t *testing.T) {
		doc := []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      initContainers:\n        - name: a\n          restartPolicyy: Always\n")
		assert.ErrorContains(t, decodeStrict(doc, &appsv1.Deployment{}), "restartPolicyy")
	})
}

// listenerPorts returns the port of each listener of a bootstrap file.
func listenerPorts(t *testing.T, path string) map[string]int {
	t.Helper()
	var b struct {
		StaticResources struct {
			Listeners []struct {
				Name    string `json:"name"`
				Address struct {
					SocketAddress struct {
						Address   string `json:"address"`
						PortValue int    `json:"port_value"`
					} `json:"socket_address"`
				} `json:"address"`
			} `json:"listeners"`
		} `json:"static_resources"`
	}
	require.NoError(t, yaml.Unmarshal(readFile(t, path), &b))
	out := map[string]int{}
	for _, l := range b.StaticResources.Listeners {
		out[l.Name] = l.Address.SocketAddress.PortValue
	}
	return out
}

func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	i := slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == name })
	require.NotEqual(t, -1, i, "container %s", name)
	return cs[i]
}

func flag(c corev1.Container, name string) (string, bool) {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func mountAt(t *testing.T, c corev1.Container, path string) corev1.VolumeMount {
	t.Helper()
	i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == path })
	require.NotEqual(t, -1, i, "%s: nothing mounted at %s", c.Name, path)
	return c.VolumeMounts[i]
}

func volume(t *testing.T, spec corev1.PodSpec, name string) corev1.Volume {
	t.Helper()
	i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == name })
	require.NotEqual(t, -1, i, "volume %s", name)
	return spec.Volumes[i]
}

func portNamed(t *testing.T, c corev1.Container, name string) corev1.ContainerPort {
	t.Helper()
	i := slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == name })
	require.NotEqual(t, -1, i, "%s: port %s", c.Name, name)
	return c.Ports[i]
}

// TestK8sWorkerPod checks the pod of the base and the overlay against the
// Envoy config, the policy, and each other. Serve's flags and the
// probes' ports are checked against serve itself in cmd/tollgate
// (TestK8sArgsAreServeFlags).
func TestK8sWorkerPod(t *testing.T) {
	for _, dir := range []string{k8sBase, k8sOverlay} {
		t.Run(dir, func(t *testing.T) { checkWorkerPod(t, dir) })
	}
}

func checkWorkerPod(t *testing.T, dir string) {
	d := decodeAll(t, build(t, dir))
	dep, ok := d.deployments["worker"]
	require.True(t, ok)
	spec := dep.Spec.Template.Spec
	labels := dep.Spec.Template.Labels

	t.Run("native sidecars: tollgate, then envoy, restartPolicy Always", func(t *testing.T) {
		var names []string
		for _, c := range spec.InitContainers {
			names = append(names, c.Name)
			require.NotNil(t, c.RestartPolicy, "%s is a native sidecar", c.Name)
			assert.Equal(t, corev1.ContainerRestartPolicyAlways, *c.RestartPolicy, c.Name)
			assert.NotNil(t, c.StartupProbe, "%s gates the next container on its startup probe", c.Name)
			assert.NotNil(t, c.ReadinessProbe, c.Name)
		}
		assert.Equal(t, []string{"tollgate", "envoy"}, names, "Tollgate starts first: Envoy fails closed without it")
	})

	sidecarPorts := listenerPorts(t, "../envoy/sidecar.yaml")
	statsPorts := listenerPorts(t, "envoy-stats.yaml")
	envoy := container(t, spec.InitContainers, "envoy")
	tollgate := container(t, spec.InitContainers, "tollgate")

	t.Run("the worker's SDKs go through Envoy", func(t *testing.T) {
		w := container(t, spec.Containers, "worker")
		env := map[string]string{}
		for _, e := range w.Env {
			env[e.Name] = e.Value
		}
		for name, listener := range map[string]string{"OPENAI_BASE_URL": "openai", "ANTHROPIC_BASE_URL": "anthropic", "CLOUDFLARE_BASE_URL": "cloudflare"} {
			u, err := url.Parse(env[name])
			require.NoError(t, err)
			assert.Equal(t, "http", u.Scheme, name)
			assert.Equal(t, "127.0.0.1", u.Hostname(), "%s: Envoy listens on the pod's loopback", name)
			assert.Equal(t, strconv.Itoa(sidecarPorts[listener]), u.Port(), "%s: the %s listener", name, listener)
		}
		assert.Equal(t, "/v1", must(url.Parse(env["OPENAI_BASE_URL"])).Path)
		assert.Equal(t, "/client/v4", must(url.Parse(env["CLOUDFLARE_BASE_URL"])).Path, "the Cloudflare SDKs' base URL ends in /client/v4")
		cm, ok := d.configMaps["tollgate-policy"]
		require.True(t, ok)
		set, err := policy.Parse("policy.yaml", strings.NewReader(cm.Data["policy.yaml"]))
		require.NoError(t, err)
		for _, c := range strings.Split(env["WORKER_CLIENTS"], ",") {
			assert.Contains(t, set.Clients, c, "WORKER_CLIENTS names a client of the policy")
		}
	})

	t.Run("envoy runs envoy/sidecar.yaml and envoy-stats.yaml", func(t *testing.T) {
		require.Len(t, envoy.Command, 3)
		m := regexp.MustCompile(`^exec envoy -c (\S+) --config-yaml "\$\(cat (\S+)\)"$`).FindStringSubmatch(envoy.Command[2])
		require.NotNil(t, m, "envoy command %q", envoy.Command[2])
		for file, want := range map[string]string{m[1]: "../envoy/sidecar.yaml", m[2]: "envoy-stats.yaml"} {
			mnt := mountAt(t, envoy, filepath.Dir(file))
			assert.Empty(t, mnt.SubPath)
			v := volume(t, spec, mnt.Name)
			require.NotNil(t, v.ConfigMap, "%s is a ConfigMap", file)
			cm, ok := d.configMaps[v.ConfigMap.Name]
			require.True(t, ok, "ConfigMap %s", v.ConfigMap.Name)
			assert.Equal(t, string(readFile(t, want)), cm.Data[filepath.Base(file)],
				"%s must be %s as it is, which envoy/ and deploy/ tests validate (make k8s-sync)", file, want)
		}
		stats := portNamed(t, envoy, "envoy-stats")
		assert.Equal(t, int32(statsPorts["envoy_stats"]), stats.ContainerPort)
		for _, p := range []*corev1.Probe{envoy.StartupProbe, envoy.ReadinessProbe} {
			require.NotNil(t, p.HTTPGet)
			assert.Equal(t, "/ready", p.HTTPGet.Path, "envoy-stats.yaml routes GET /ready to the admin API")
			assert.Equal(t, "envoy-stats", p.HTTPGet.Port.String())
		}
	})

	t.Run("tollgate's policy, gossip key and peers", func(t *testing.T) {
		path, ok := flag(tollgate, "policy")
		require.True(t, ok)
		mnt := mountAt(t, tollgate, path)
		assert.Empty(t, mnt.SubPath, "a subPath mount never sees ConfigMap updates: mount the directory")
		v := volume(t, spec, mnt.Name)
		require.NotNil(t, v.ConfigMap)
		assert.Equal(t, "tollgate-policy", v.ConfigMap.Name, "the ConfigMap keeps its name (no hash suffix) so updates reach running pods")

		keyFile, ok := flag(tollgate, "gossip-key-file")
		require.True(t, ok)
		km := mountAt(t, tollgate, filepath.Dir(keyFile))
		kv := volume(t, spec, km.Name)
		require.NotNil(t, kv.Secret, "the gossip key comes from a Secret")
		assert.Contains(t, kv.Secret.Items, corev1.KeyToPath{Key: "key", Path: filepath.Base(keyFile)})

		dns, ok := flag(tollgate, "cluster-dns")
		require.True(t, ok)
		svc, ok := d.services[strings.Split(dns, ".")[0]]
		require.True(t, ok, "--cluster-dns names the headless Service")
		assert.Equal(t, corev1.ClusterIPNone, svc.Spec.ClusterIP)
		assert.True(t, svc.Spec.PublishNotReadyAddresses, "members find each other before they are ready")
		assert.Equal(t, labels["app"], svc.Spec.Selector["app"])
		for _, p := range svc.Spec.Ports {
			cp := portNamed(t, tollgate, p.TargetPort.String())
			assert.Equal(t, p.Port, cp.ContainerPort)
			assert.Equal(t, p.Protocol, cp.Protocol)
		}
	})

	t.Run("the NetworkPolicy admits gossip and metrics only", func(t *testing.T) {
		require.Len(t, d.netpols, 1)
		np := d.netpols[0]
		assert.Equal(t, labels["app"], np.Spec.PodSelector.MatchLabels["app"])
		assert.Equal(t, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}, np.Spec.PolicyTypes)
		admitted := map[string]bool{}
		for _, rule := range np.Spec.Ingress {
			require.NotEmpty(t, rule.From, "every rule names its sources")
			for _, p := range rule.Ports {
				admitted[fmt.Sprintf("%d/%s", p.Port.IntValue(), *p.Protocol)] = true
			}
		}
		want := map[string]bool{"7946/TCP": true, "7946/UDP": true, "9902/TCP": true}
		_, httpPort := hostPort(t, tollgate, "http-addr")
		want[httpPort+"/TCP"] = true
		assert.Equal(t, want, admitted)
		_, grpcPort := hostPort(t, tollgate, "grpc-addr")
		assert.False(t, admitted[grpcPort+"/TCP"], "ext_authz and ext_proc stay in the pod")
	})

	t.Run("the PodMonitor scrapes tollgate and envoy", func(t *testing.T) {
		require.Len(t, d.monitors, 1)
		pm := d.monitors[0]
		assert.Equal(t, "monitoring.coreos.com/v1", pm.APIVersion)
		assert.Equal(t, labels["app"], pm.Spec.Selector.MatchLabels["app"])
		got := map[string]string{}
		for _, e := range pm.Spec.PodMetricsEndpoints {
			got[e.Port] = e.Path
		}
		assert.Equal(t, map[string]string{"http": "/metrics", "envoy-stats": "/stats/prometheus"}, got)
		_, httpPort := hostPort(t, tollgate, "http-addr")
		assert.Equal(t, httpPort, strconv.Itoa(int(portNamed(t, tollgate, "http").ContainerPort)))
	})

	t.Run("the PodDisruptionBudget leaves room to drain", func(t *testing.T) {
		require.Len(t, d.pdbs, 1)
		pdb := d.pdbs[0]
		assert.Equal(t, labels["app"], pdb.Spec.Selector.MatchLabels["app"])
		require.NotNil(t, pdb.Spec.MinAvailable)
		require.NotNil(t, dep.Spec.Replicas)
		assert.Less(t, pdb.Spec.MinAvailable.IntValue(), int(*dep.Spec.Replicas), "a drain can evict one pod")
		assert.GreaterOrEqual(t, pdb.Spec.MinAvailable.IntValue(), 1)
	})

	t.Run("tollgate's memory is sized from the measured RSS", func(t *testing.T) {
		perf := string(readFile(t, "../docs/performance.md"))
		m := regexp.MustCompile(`resident memory at start \d+ MB → (\d+) MB`).FindStringSubmatch(perf)
		require.NotNil(t, m, "docs/performance.md states the RSS at start")
		rss, err := strconv.Atoi(m[1])
		require.NoError(t, err)
		req := tollgate.Resources.Requests.Memory()
		require.False(t, req.IsZero(), "a memory request")
		assert.GreaterOrEqual(t, req.Value(), int64(rss)*1_000_000*2, "at least twice the %d MB measured at start", rss)
		lim := tollgate.Resources.Limits.Memory()
		assert.Greater(t, lim.Value(), req.Value())
		assert.Contains(t, string(readFile(t, filepath.Join(k8sBase, "worker.yaml"))), fmt.Sprintf("resident memory at start %d MB", rss),
			"worker.yaml cites the figure it is sized from")
	})
}

func hostPort(t *testing.T, c corev1.Container, name string) (string, string) {
	t.Helper()
	v, ok := flag(c, name)
	require.True(t, ok, "--%s", name)
	i := strings.LastIndex(v, ":")
	require.NotEqual(t, -1, i, v)
	return v[:i], v[i+1:]
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestK8sCopiesInSync: kustomize reads no file outside its directory, so
// the base holds copies of the Envoy configs; they must be the files the
// envoy/ and deploy/ tests validate.
func TestK8sCopiesInSync(t *testing.T) {
	for copy, orig := range map[string]string{
		k8sBase + "/envoy/sidecar.yaml":                    "../envoy/sidecar.yaml",
		k8sBase + "/envoy/stats.yaml":                      "envoy-stats.yaml",
		k8sTransparent + "/envoy/sidecar-transparent.yaml": "../envoy/sidecar-transparent.yaml",
		k8sTransparent + "/envoy/stats.yaml":               "envoy-stats.yaml",
	} {
		assert.Equal(t, string(readFile(t, orig)), string(readFile(t, copy)), "%s differs from %s: run make k8s-sync", copy, orig)
	}
	for _, p := range []string{k8sBase + "/policy/policy.yaml", k8sOverlay + "/policy.yaml"} {
		_, err := policy.Load(p)
		assert.NoError(t, err, p)
	}
}

// TestK8sKubectlKustomize builds both kustomizations with kustomize itself
// (kubectl kustomize) when kubectl is installed, and decodes the result
// strictly: the same objects as the test's own build, the generated
// ConfigMaps' hashes aside.
func TestK8sKubectlKustomize(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed: the test's own build (TestK8sWorkerPod) still runs")
	}
	for _, dir := range []string{k8sBase, k8sOverlay, k8sTransparent} {
		t.Run(dir, func(t *testing.T) {
			out, err := exec.Command(kubectl, "kustomize", dir).Output()
			require.NoError(t, err)
			var got, want []string
			for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(out), -1) {
				o := toObject(t, []byte(doc))
				v, ok := typed(o.kind())
				require.True(t, ok, o.kind())
				require.NoError(t, decodeStrict([]byte(doc), v), "%s %s", o.kind(), o.name())
				got = append(got, o.kind()+"/"+regexp.MustCompile(`-[a-z0-9]{10}$`).ReplaceAllString(o.name(), "")) // the generator's hash
			}
			for _, o := range build(t, dir) {
				want = append(want, o.kind()+"/"+o.name())
			}
			assert.ElementsMatch(t, want, got)
		})
	}
}
