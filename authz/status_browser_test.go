package authz_test

import (
	"bytes"
	"context"
	"image"
	"image/color"
	"image/png"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The status page in a real browser: headless Chromium (Debian package
// chromium; `make deps` installs it) loads it through a loopback proxy
// that adds the bearer token, as a person's browser would after logging in,
// and we read back what it rendered: the DOM, and a screenshot in which
// the pool bar must show at the size its fill says.

// poolBar is the pool bar's colour in status.html (#1a7f5a).
var poolBar = color.NRGBA{R: 0x1a, G: 0x7f, B: 0x5a, A: 0xff}

// chromium runs headless Chromium once with args and the page URL, and
// returns what it printed. It is bounded by a timeout, gets a throwaway
// profile, and its whole process group is killed when it ends.
func chromium(t *testing.T, pageURL string, args ...string) []byte {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	require.NoError(t, err, "chromium not found: run `make deps` (it installs the Debian package chromium) or apt-get install chromium")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + t.TempDir(),
		"--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
		"--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
		"--force-color-profile=srgb", "--force-device-scale-factor=1", "--window-size=1280,2000"}
	cmd := exec.CommandContext(ctx, bin, append(append(base, args...), pageURL)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The launcher starts the browser, which starts its helpers: kill
	// them all, on the timeout and after a normal exit alike.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // helpers left behind, if any
	}
	require.NoError(t, err, "chromium %v:\n%s", args, stderr.String())
	return stdout.Bytes()
}

// tokenProxy serves on loopback and forwards to the API listener with the
// bearer token added.
func tokenProxy(t *testing.T, api, token string) string {
	t.Helper()
	target := &url.URL{Scheme: "http", Host: api}
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Header.Set("Authorization", "Bearer "+token)
	}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.NoError(t, srv.Shutdown(ctx))
		<-done
	})
	return "http://" + lis.Addr().String() + "/"
}

// TestStatusPageInChromium: the page Chromium renders has the pools with
// their fill, the budgets' spend, the queue and the refusals, and its
// screenshot shows the "calls" pool's bar (80% full: 240 of 300 px) in
// its colour where the pools table is.
func TestStatusPageInChromium(t *testing.T) {
	ts := statusScene(t)
	page := tokenProxy(t, ts.srv.APIAddr().String(), testToken)

	dom := string(chromium(t, page, "--dump-dom"))
	for _, want := range []string{
		"Tollgate status", `data-pool="calls"`, "8 / 10 request", `data-pool="burst"`, "0 / 2 request",
		`data-client="alpha"`, "$0.05", `data-client="beta"`, "$50",
		`<tr data-class="normal"><td>normal</td><td class="num">1</td>`,
		"unknown_client", "unmatched_route", "&lt;script&gt;",
	} {
		assert.Contains(t, dom, want)
	}
	assert.NotContains(t, dom, "<script")

	shot := filepath.Join(t.TempDir(), "status.png")
	chromium(t, page, "--screenshot="+shot)
	b, err := os.ReadFile(shot)
	require.NoError(t, err)
	assert.Equal(t, "image/png", http.DetectContentType(b))
	img, err := png.Decode(bytes.NewReader(b))
	require.NoError(t, err)
	require.Equal(t, image.Rect(0, 0, 1280, 2000), img.Bounds())

	// The bar's pixels: their box is the calls pool's fill, 240 × 16.
	box, n, inked := image.Rectangle{}, 0, 0
	for y := 0; y < 2000; y++ {
		for x := 0; x < 1280; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			if c.R < 0xf0 || c.G < 0xf0 || c.B < 0xf0 {
				inked++
			}
			if near(c, poolBar) {
				n++
				box = box.Union(image.Rect(x, y, x+1, y+1))
			}
		}
	}
	assert.Greater(t, inked, 20_000, "the page is not blank")
	assert.InDelta(t, 240, box.Dx(), 2, "the bar's width: 80%% of 300 px (box %v)", box)
	assert.InDelta(t, 16, box.Dy(), 2, "the bar's height (box %v)", box)
	assert.InDelta(t, 240*16, n, 240*16/10, "the bar's pixels")
	assert.Less(t, box.Min.Y, 1000, "the bar is in the top half, in the pools table")
	if t.Failed() {
		t.Logf("screenshot kept for a look: %s", keep(b))
	}
}

// near reports whether c is within a few steps of want in every channel.
func near(c, want color.NRGBA) bool {
	d := func(a, b uint8) int { return max(int(a)-int(b), int(b)-int(a)) }
	return d(c.R, want.R) <= 6 && d(c.G, want.G) <= 6 && d(c.B, want.B) <= 6
}

// keep writes the screenshot where it outlives the test's temp dir.
func keep(b []byte) string {
	f, err := os.CreateTemp("", "tollgate-status-*.png")
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return err.Error()
	}
	return f.Name()
}
