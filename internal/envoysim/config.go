// Package envoysim is a stand-in for Envoy running envoy/sidecar.yaml, for
// tests on machines with no Envoy binary: an HTTP proxy per listener that
// does per request what the config's filter chain does. It asks ext_authz
// over real gRPC (with the request body, the route's context extensions,
// without the withheld headers), applies the verdict's header mutations or
// answers with the denial, then runs ext_proc over real gRPC with the
// configured processing mode, mode override, message timeout and fail-open,
// applying header and body mutations and streaming the response body chunk
// by chunk, and forwards the call to a plain-HTTP upstream on loopback in
// place of the provider's TLS endpoint.
//
// The config is read into go-control-plane's own types, so a field the
// stand-in does not know is an error rather than a guess. What it does not
// model: retries, circuit breakers, path normalization, trailers, HTTP/2 to
// the worker, and the exact byte framing of Envoy's buffers.
package envoysim

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	authzfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	procfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	// Types that appear in typed_config of the shipped config: protojson
	// resolves an Any only for a registered type.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// Filter names of the HTTP filters the stand-in runs.
const (
	authzFilter = "envoy.filters.http.ext_authz"
	procFilter  = "envoy.filters.http.ext_proc"
)

// Envoy's defaults where the config leaves a field unset.
const (
	defaultAuthzTimeout   = 200 * time.Millisecond
	defaultMessageTimeout = 200 * time.Millisecond
	// defaultBufferLimit is Envoy's per_connection_buffer_limit_bytes: what
	// a BUFFERED or BUFFERED_PARTIAL body may hold.
	defaultBufferLimit = 1 << 20
)

// Listener is what of one listener's config the stand-in acts on: its
// first route, and its ext_authz and ext_proc filters (nil when absent).
type Listener struct {
	Name string
	// HostRewrite is the route's host_rewrite_literal: the upstream's
	// :authority.
	HostRewrite string
	// RequestHeadersToRemove are removed by the router, after the filters.
	RequestHeadersToRemove []string
	// ContextExtensions come from the route's ExtAuthzPerRoute.
	ContextExtensions map[string]string
	Authz             *authzfilterv3.ExtAuthz
	Proc              *procfilterv3.ExternalProcessor
}

// Load reads an Envoy bootstrap (YAML or JSON) into go-control-plane's
// types, validates it, and returns its listeners by name.
func Load(path string) (map[string]*Listener, error) {
	y, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("envoysim: %w", err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		return nil, fmt.Errorf("envoysim: %s: %w", path, err)
	}
	bs := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(j, bs); err != nil {
		return nil, fmt.Errorf("envoysim: %s: %w", path, err)
	}
	if err := bs.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoysim: %s: %w", path, err)
	}
	out := map[string]*Listener{}
	for _, l := range bs.GetStaticResources().GetListeners() {
		lis, err := listener(l.GetName(), l.GetFilterChains())
		if err != nil {
			return nil, fmt.Errorf("envoysim: %s: listener %s: %w", path, l.GetName(), err)
		}
		out[l.GetName()] = lis
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("envoysim: %s has no listeners", path)
	}
	return out, nil
}

func listener(name string, chains []*listenerv3.FilterChain) (*Listener, error) {
	if len(chains) != 1 {
		return nil, fmt.Errorf("%d filter chains, the stand-in runs exactly one", len(chains))
	}
	var hcm *hcmv3.HttpConnectionManager
	for _, f := range chains[0].GetFilters() {
		if f.GetName() != "envoy.filters.network.http_connection_manager" {
			continue
		}
		hcm = &hcmv3.HttpConnectionManager{}
		if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
			return nil, err
		}
	}
	if hcm == nil {
		return nil, errors.New("no http_connection_manager")
	}
	lis := &Listener{Name: name}
	vhs := hcm.GetRouteConfig().GetVirtualHosts()
	if len(vhs) == 0 || len(vhs[0].GetRoutes()) == 0 {
		return nil, errors.New("no inline route")
	}
	r := vhs[0].GetRoutes()[0]
	lis.HostRewrite = r.GetRoute().GetHostRewriteLiteral()
	lis.RequestHeadersToRemove = append(append([]string(nil), r.GetRequestHeadersToRemove()...), vhs[0].GetRequestHeadersToRemove()...)
	if a, ok := r.GetTypedPerFilterConfig()[authzFilter]; ok {
		per := &authzfilterv3.ExtAuthzPerRoute{}
		if err := a.UnmarshalTo(per); err != nil {
			return nil, err
		}
		lis.ContextExtensions = per.GetCheckSettings().GetContextExtensions()
	}
	for _, f := range hcm.GetHttpFilters() {
		switch f.GetName() {
		case authzFilter:
			lis.Authz = &authzfilterv3.ExtAuthz{}
			if err := f.GetTypedConfig().UnmarshalTo(lis.Authz); err != nil {
				return nil, err
			}
		case procFilter:
			lis.Proc = &procfilterv3.ExternalProcessor{}
			if err := f.GetTypedConfig().UnmarshalTo(lis.Proc); err != nil {
				return nil, err
			}
		}
	}
	return lis, nil
}

// authzTimeout is the ext_authz gRPC timeout.
func (l *Listener) authzTimeout() time.Duration {
	if t := l.Authz.GetGrpcService().GetTimeout(); t != nil {
		return t.AsDuration()
	}
	return defaultAuthzTimeout
}

// messageTimeout is the ext_proc per-message timeout.
func (l *Listener) messageTimeout() time.Duration {
	if t := l.Proc.GetMessageTimeout(); t != nil {
		return t.AsDuration()
	}
	return defaultMessageTimeout
}

// withheld reports whether a header is in a filter's disallowed list.
func withheld(name string, patterns []*matcherv3.StringMatcher) bool {
	for _, p := range patterns {
		if matchString(p, name) {
			return true
		}
	}
	return false
}

// matchString is Envoy's StringMatcher on a header name.
func matchString(m *matcherv3.StringMatcher, s string) bool {
	if m.GetIgnoreCase() {
		s = strings.ToLower(s)
	}
	low := func(p string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(p)
		}
		return p
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return s == low(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(s, low(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(s, low(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(s, low(p.Contains))
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile(p.SafeRegex.GetRegex())
		return err == nil && re.MatchString(s)
	}
	return false
}
