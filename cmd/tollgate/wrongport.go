package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"time"
)

// The protocols a Tollgate port speaks: serve --grpc-addr is HTTP/2 only
// (gRPC), serve --http-addr is HTTP/1.1.
const (
	protoGRPC = "gRPC"
	protoHTTP = "HTTP"
)

// sniffProtocol tells which of Tollgate's two ports addr is, after a call to
// it failed: it sends a plain HTTP/1.1 request and looks at the first bytes
// of the answer. An HTTP/1 server answers "HTTP/1.x"; a gRPC (HTTP/2) server
// starts with its SETTINGS frame (frame type 4 in the fourth byte). It
// returns "" when it cannot tell.
func sniffProtocol(ctx context.Context, addr string) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return ""
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return ""
		}
	}
	if _, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: tollgate\r\nConnection: close\r\n\r\n")); err != nil {
		return ""
	}
	buf := make([]byte, 9) // an HTTP/2 frame header
	n, _ := conn.Read(buf)
	buf = buf[:n]
	switch {
	case bytes.HasPrefix(buf, []byte("HTTP/")):
		return protoHTTP
	case n >= 4 && buf[3] == 0x4:
		return protoGRPC
	}
	return ""
}

// wrongPort explains a failed call to addr when addr is the other of
// Tollgate's ports: want is the protocol the command speaks, flag the
// serve flag whose address it needs. It returns err unchanged otherwise.
func wrongPort(ctx context.Context, cmd, addr, want, flag, def string, err error) error {
	got := sniffProtocol(ctx, addr)
	if got == "" || got == want {
		return err
	}
	other := "--http-addr"
	if flag == other {
		other = "--grpc-addr"
	}
	return fmt.Errorf("%s: %s looks like Tollgate's %s port (serve %s), but %s speaks %s: "+
		"give --addr the address of serve %s (default %s): %w", cmd, addr, got, other, cmd, want, flag, def, err)
}
