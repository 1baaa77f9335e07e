package authz

// Translation between Envoy's ext_proc messages and Tollgate's plain types.
// No server code lives here.

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// procHeaders reads an ext_proc header map into lower-case names. Envoy
// sends values in raw_value (value is the older form); a repeated header
// keeps its values joined by commas.
func procHeaders(hm *corev3.HeaderMap) map[string]string {
	hs := hm.GetHeaders()
	out := make(map[string]string, len(hs))
	for _, h := range hs {
		v := string(h.GetRawValue())
		if v == "" {
			v = h.GetValue()
		}
		k := strings.ToLower(h.GetKey())
		if prev, ok := out[k]; ok && prev != "" {
			v = prev + "," + v
		}
		out[k] = v
	}
	return out
}

// procStatus reads the response's :status, or 0.
func procStatus(hs map[string]string) int {
	n, err := strconv.Atoi(strings.TrimSpace(hs[":status"]))
	if err != nil || n < 100 || n > 999 {
		return 0
	}
	return n
}

// untrackedMode is the processing mode for a call Tollgate learns nothing
// from (Envoy honours it with allow_mode_override): no more messages.
var untrackedMode = &procfilterv3.ProcessingMode{
	RequestBodyMode:     procfilterv3.ProcessingMode_NONE,
	ResponseHeaderMode:  procfilterv3.ProcessingMode_SKIP,
	ResponseBodyMode:    procfilterv3.ProcessingMode_NONE,
	RequestTrailerMode:  procfilterv3.ProcessingMode_SKIP,
	ResponseTrailerMode: procfilterv3.ProcessingMode_SKIP,
}

// responseOnlyMode skips the request body (nothing to rewrite) and streams
// the response.
var responseOnlyMode = &procfilterv3.ProcessingMode{
	RequestBodyMode:     procfilterv3.ProcessingMode_NONE,
	ResponseHeaderMode:  procfilterv3.ProcessingMode_SEND,
	ResponseBodyMode:    procfilterv3.ProcessingMode_STREAMED,
	RequestTrailerMode:  procfilterv3.ProcessingMode_SKIP,
	ResponseTrailerMode: procfilterv3.ProcessingMode_SKIP,
}

// requestHeadersResponse answers the request headers with a processing
// mode; identity asks the upstream for an uncompressed response
// (accept-encoding: identity), one Tollgate can read as it streams.
func requestHeadersResponse(mode *procfilterv3.ProcessingMode, identity bool) *extprocv3.ProcessingResponse {
	hr := &extprocv3.HeadersResponse{}
	if identity {
		hr.Response = &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: "accept-encoding", RawValue: []byte("identity")},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}}}}
	}
	return &extprocv3.ProcessingResponse{
		Response:     &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: hr},
		ModeOverride: mode,
	}
}

// responseHeadersResponse answers the response headers, setting set on
// them (sorted by name, so the answer is deterministic).
func responseHeadersResponse(set map[string]string) *extprocv3.ProcessingResponse {
	hr := &extprocv3.HeadersResponse{}
	if len(set) > 0 {
		names := slices.Sorted(maps.Keys(set))
		opts := make([]*corev3.HeaderValueOption, len(names))
		for i, n := range names {
			opts[i] = &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: n, RawValue: []byte(set[n])},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
		}
		hr.Response = &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: opts}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: hr}}
}

// requestBodyResponse replaces a buffered request body when changed, with
// the content-length Envoy needs to forward it.
func requestBodyResponse(body []byte, changed bool) *extprocv3.ProcessingResponse {
	br := &extprocv3.BodyResponse{}
	if changed {
		br.Response = &extprocv3.CommonResponse{
			BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: body}},
			HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
				Header:       &corev3.HeaderValue{Key: "content-length", RawValue: []byte(strconv.Itoa(len(body)))},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			}}},
		}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: br}}
}

// responseBodyResponse answers one streamed response chunk: unchanged, or
// replaced by out (cleared when out is empty).
func responseBodyResponse(out []byte, rewrite bool) *extprocv3.ProcessingResponse {
	br := &extprocv3.BodyResponse{}
	if rewrite {
		m := &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: out}}
		if len(out) == 0 {
			m.Mutation = &extprocv3.BodyMutation_ClearBody{ClearBody: true}
		}
		br.Response = &extprocv3.CommonResponse{BodyMutation: m}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
}

func trailersResponse(request bool) *extprocv3.ProcessingResponse {
	if request {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
}
