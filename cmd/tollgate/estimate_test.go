package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
)

func runEstimate(stdin string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := append([]string{"estimate"}, cliArgs(args)...)
	err := runIO(context.Background(), cmd, withTestToken(noEnv), strings.NewReader(stdin), &out, io.Discard)
	return out.String(), err
}

// TestEstimateCommand: the estimate of the bundled policy, locally and from
// a running server, agree, and both say how they got there.
func TestEstimateCommand(t *testing.T) {
	const chat = "../../testdata/bodies/openai/chat-simple-stream.json"
	out, err := runEstimate("", "--url", "https://api.openai.com/v1/chat/completions", "--body", chat)
	require.NoError(t, err, out)
	assert.Regexp(t, `(?m)^route +openai-\S+ \(openai\)$`, out)
	assert.Regexp(t, `(?m)^tokens +in \d+, out \d+ +counted exactly$`, out)
	assert.Regexp(t, `(?m)^reserve +\$[0-9.]+ +conservative, 120% of the estimate$`, out)

	local, err := runEstimate("", "--url", "https://api.openai.com/v1/chat/completions", "--body", chat, "--json")
	require.NoError(t, err)
	var l admission.EstimateReport
	require.NoError(t, json.Unmarshal([]byte(local), &l), local)
	assert.True(t, l.Exact)
	assert.True(t, l.Stream)
	assert.Equal(t, "chat", l.Kind)

	grpcAddr, httpAddr := freePort(t), freePort(t)
	startRun(t, noEnv, httpAddr, serveArgs(grpcAddr, httpAddr)...)
	remote, err := runEstimate("", "--url", "https://api.openai.com/v1/chat/completions", "--body", chat, "--json", "--addr", httpAddr)
	require.NoError(t, err)
	var r admission.EstimateReport
	require.NoError(t, json.Unmarshal([]byte(remote), &r))
	assert.Equal(t, l, r, "the server's estimate is the same as the local one")

	sms, err := runEstimate("", "--url", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json",
		"--body", "../../testdata/bodies/twilio/sms-ucs2-emoji.txt", "--json")
	require.NoError(t, err)
	var s admission.EstimateReport
	require.NoError(t, json.Unmarshal([]byte(sms), &s))
	assert.Equal(t, "twilio-sms", s.Route)
	assert.Equal(t, "segment", string(s.Pools[0].Unit))
	assert.Positive(t, s.Segments, "the body was read form-encoded")

	_, err = runEstimate("", "--url", "https://example.com/x")
	require.ErrorContains(t, err, "no route matches example.com/x")
	_, err = runEstimate("", "--url", "https://api.openai.com/v1/chat/completions", "--addr", freePort(t))
	require.ErrorContains(t, err, "connection refused")
	_, err = runEstimate("", "--url", "not a url")
	require.ErrorContains(t, err, "want an absolute URL")
	out, err = runEstimate(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`, "--url", "https://api.openai.com/v1/chat/completions", "--body", "-")
	require.NoError(t, err)
	assert.Contains(t, out, `priced by "gpt-4o-mini*"`)
}
