package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRunPrintsAddressAndStops starts the binary's run on port 0, calls the
// address it printed, and stops it by cancelling its context.
func TestRunPrintsAddressAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--scenario", "429"}, pw) }()
	addr, err := bufio.NewReader(pr).ReadString('\n')
	require.NoError(t, err)
	addr = strings.TrimSpace(addr)
	assert.True(t, strings.HasPrefix(addr, "127.0.0.1:"), addr)

	resp, err := http.Post("http://"+addr+"/v1/messages", "application/json", strings.NewReader(`{}`))
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "--scenario applies to every request")

	cancel()
	require.NoError(t, <-done)
}
