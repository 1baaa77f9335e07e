// Command fakeapi serves the provider look-alike of internal/fakeapi
// (OpenAI, Anthropic, Twilio, SendGrid, Cloudflare D1 and KV) for tests
// and demos:
//
//	fakeapi --addr 127.0.0.1:0 [--scenario gzip,slow] [--retry-after 1s]
//
// It prints the address it listens on, one line on stdout, and serves
// until interrupted.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tollgate/tollgate/internal/fakeapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "fakeapi:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends; it writes the bound address to out first.
func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("fakeapi", flag.ContinueOnError)
	cfg := fakeapi.DefaultConfig()
	addr := fs.String("addr", "127.0.0.1:8090", "listen address (port 0: any free port)")
	scenarios := fs.String("scenario", "", "comma-separated scenarios for every request: 429, gzip, deflate, slow, cached")
	fs.DurationVar(&cfg.RetryAfter, "retry-after", cfg.RetryAfter, "Retry-After of a 429")
	fs.DurationVar(&cfg.SlowDelay, "slow-delay", cfg.SlowDelay, "pause between streamed events under the slow scenario")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *scenarios != "" {
		cfg.Scenarios = strings.Split(*scenarios, ",")
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: fakeapi.New(cfg), ReadHeaderTimeout: 10 * time.Second}
	if _, err := fmt.Fprintln(out, lis.Addr().String()); err != nil {
		return errors.Join(err, lis.Close())
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
