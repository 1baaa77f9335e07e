// Package envoy holds the Envoy configurations that run beside Tollgate
// (sidecar.yaml: the worker's local ports, the ext_authz check against
// Tollgate and verified TLS to each provider; sidecar-http.yaml: the same
// with ext_authz over HTTP) and the tests that validate
// them without an Envoy binary: every *.yaml here is decoded into
// go-control-plane's typed v3 API and checked against its
// protoc-gen-validate rules, including inside every typed_config, and the
// docker-compose setup in ../deploy is checked against sidecar.yaml.
package envoy
