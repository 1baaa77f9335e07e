package main

// The tollgate processes under soak: started from the built binary on
// loopback ports, read from outside as an operator would (/proc, /metrics,
// the JSON API), and stopped with SIGTERM as a pod is.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/procstat"
)

// member is one `tollgate serve` child process.
type member struct {
	name                       string
	grpcAddr, httpAddr, apiURL string
	gossipAddr                 string // in a fleet
	redisPort                  int    // its store's, or 0
	token                      string
	cmd                        *exec.Cmd
	exited                     chan struct{} // closed once the process has been waited for
	logs                       *logTally
	scrape, api                *http.Client
}

// memberSpec is what a member is started with.
type memberSpec struct {
	bin, name, policy, tokenFile string
	token                        string
	redisPort                    int      // the Redis store's port, or 0
	extra                        []string // the store's flags
}

// startMember starts `bin serve` on free loopback ports and waits until
// /readyz answers 200. The member it returns, even with an error, must be
// stopped.
func startMember(ctx context.Context, sp memberSpec, startTimeout time.Duration) (*member, error) {
	var addrs [3]string
	for i := range addrs {
		a, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	m := &member{name: sp.name, grpcAddr: addrs[0], httpAddr: addrs[1], apiURL: "http://" + addrs[2], token: sp.token, redisPort: sp.redisPort,
		exited: make(chan struct{}), logs: newLogTally(),
		// A fresh connection per scrape: the sampler must not hold one open
		// between readings, or it would count among what it measures.
		scrape: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
		api:    &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}},
	}
	args := append([]string{"serve", "--policy", sp.policy, "--settle", "deferred",
		"--grpc-addr", addrs[0], "--http-addr", addrs[1], "--api-addr", addrs[2], "--api-token-file", sp.tokenFile,
		"--log-level", "warn", "--log-format", "json", "--drain-delay", "0s"}, sp.extra...)
	m.cmd = exec.Command(sp.bin, args...)
	m.cmd.Env = childEnv(os.Environ())
	m.cmd.Stdout, m.cmd.Stderr = m.logs, m.logs
	// The child dies with the soak even if the soak is killed outright.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("soak: start %s: %w", sp.name, err)
	}
	go func() { _ = m.cmd.Wait(); close(m.exited) }()
	return m, m.waitReady(ctx, startTimeout)
}

func (m *member) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.httpAddr+"/readyz", nil)
		resp, err := m.scrape.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(b))
		} else {
			last = err.Error()
		}
		select {
		case <-m.exited:
			return fmt.Errorf("soak: %s exited before it was ready (%v); its output:\n%s", m.name, m.cmd.ProcessState, m.logs.tail())
		case <-ctx.Done():
			return fmt.Errorf("soak: %s not ready after %v (last: %s); its output:\n%s", m.name, timeout, last, m.logs.tail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// alive reports an error once the process has exited.
func (m *member) alive() error {
	select {
	case <-m.exited:
		return fmt.Errorf("%s exited during the soak (%v); its output:\n%s", m.name, m.cmd.ProcessState, m.logs.tail())
	default:
		return nil
	}
}

// stop sends SIGTERM and waits for a clean exit; a member that does not
// stop within timeout is killed. It says how the member stopped, and
// returns an error unless it exited 0.
func (m *member) stop(timeout time.Duration) (string, error) {
	m.api.CloseIdleConnections()
	select {
	case <-m.exited:
		return fmt.Sprintf("had already exited (%v)", m.cmd.ProcessState), fmt.Errorf("%s had exited before the end (%v)", m.name, m.cmd.ProcessState)
	default:
	}
	start := time.Now()
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(timeout):
		_ = m.cmd.Process.Kill()
		<-m.exited
		return "killed", fmt.Errorf("%s did not stop within %v of SIGTERM", m.name, timeout)
	}
	how := fmt.Sprintf("SIGTERM, %v, %v", m.cmd.ProcessState, time.Since(start).Round(time.Millisecond))
	if !m.cmd.ProcessState.Success() {
		return how, fmt.Errorf("%s stopped with %v on SIGTERM; its output:\n%s", m.name, m.cmd.ProcessState, m.logs.tail())
	}
	return how, nil
}

// reading is one sample of a member.
type reading struct {
	rss, goroutines, heap, fds float64
	redis                      float64       // connections to its Redis (among fds)
	cpu                        time.Duration // utime+stime so far
}

// read samples a member: its resident set from /proc (what the kernel
// charges the process), the rest from its own /metrics.
func (m *member) read(ctx context.Context) (reading, error) {
	var r reading
	pid := strconv.Itoa(m.cmd.Process.Pid)
	rss, err := procstat.RSS(pid)
	if err != nil {
		return r, err
	}
	if r.cpu, err = procstat.CPU(pid); err != nil {
		return r, err
	}
	if m.redisPort > 0 {
		n, err := procstat.TCPConns(pid, m.redisPort)
		if err != nil {
			return r, err
		}
		r.redis = float64(n)
	}
	ms, err := m.metrics(ctx)
	if err != nil {
		return r, err
	}
	r.rss, r.goroutines, r.heap, r.fds = float64(rss), ms["go_goroutines"], ms["go_memstats_heap_inuse_bytes"], ms["process_open_fds"]
	return r, nil
}

// metrics scrapes /metrics into series → value; the series of one name
// with labels are also summed under the bare name.
func (m *member) metrics(ctx context.Context) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.httpAddr+"/metrics", nil)
	resp, err := m.scrape.Do(req)
	if err != nil {
		return nil, fmt.Errorf("soak: %s: /metrics: %w", m.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("soak: %s: /metrics: %s", m.name, resp.Status)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format as client_golang writes
// it: "name value" or "name{labels} value", no timestamps.
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		series, val := line, ""
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			series, val = line[:i+1], strings.TrimSpace(line[i+1:])
		} else if i := strings.LastIndexByte(line, ' '); i >= 0 {
			series, val = line[:i], line[i+1:]
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return nil, fmt.Errorf("soak: metrics line %q: %w", line, err)
		}
		out[series] = v
		if name, _, ok := strings.Cut(series, "{"); ok {
			out[name] += v
		}
	}
	return out, sc.Err()
}

// apiDo calls the member's JSON API with its token and decodes a 200
// answer into into (nil: discard).
func (m *member) apiDo(ctx context.Context, method, path string, body []byte, into any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, m.apiURL+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+m.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := m.api.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode == http.StatusOK && into != nil {
		if err := json.Unmarshal(b, into); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, nil
}

// leftovers says what a member still holds after the traffic: held calls,
// calls in flight and money reserved for any of clients; "" when nothing.
func (m *member) leftovers(ctx context.Context, clients []string) (string, error) {
	var left []string
	var qs admission.QueueStatus
	if code, err := m.apiDo(ctx, http.MethodGet, "/api/queue/status", nil, &qs); err != nil || code != http.StatusOK {
		return "", fmt.Errorf("%s: queue status: %d %v", m.name, code, err)
	}
	if qs.Total > 0 || qs.Parked > 0 {
		left = append(left, fmt.Sprintf("%d held, %d parked", qs.Total, qs.Parked))
	}
	ms, err := m.metrics(ctx)
	if err != nil {
		return "", err
	}
	if d := ms["tollgate_queue_depth"]; d != 0 {
		left = append(left, fmt.Sprintf("tollgate_queue_depth %v", d))
	}
	for _, c := range clients {
		var u admission.UsageReport
		if code, err := m.apiDo(ctx, http.MethodGet, "/api/usage/"+c+"/current", nil, &u); err != nil || code != http.StatusOK {
			return "", fmt.Errorf("%s: usage of %s: %d %v", m.name, c, code, err)
		}
		if u.InFlight != 0 {
			left = append(left, fmt.Sprintf("%s: %d in flight", c, u.InFlight))
		}
		for _, b := range u.Budgets {
			if b.Reserved != "0" {
				left = append(left, fmt.Sprintf("%s: $%s reserved on budget %s", c, b.Reserved, b.Owner))
			}
		}
	}
	return strings.Join(left, "; "), nil
}

// logTally reads a member's JSON log lines: it counts those at warn and
// above by level and message, keeps every line that is not JSON (a panic,
// a runtime fatal error) and the last few kilobytes for error messages.
type logTally struct {
	mu      sync.Mutex
	partial []byte
	counts  map[string]int64
	foreign []string // lines that are not JSON
	errs    []string // the first lines at level ERROR
	last    []byte
}

func newLogTally() *logTally { return &logTally{counts: map[string]int64{}} }

// maxForeign is how many non-JSON lines a tally keeps.
const maxForeign = 50

func (l *logTally) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last = append(l.last, p...)
	if over := len(l.last) - 8<<10; over > 0 {
		l.last = append(l.last[:0], l.last[over:]...)
	}
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.line(l.partial[:i])
		l.partial = append(l.partial[:0], l.partial[i+1:]...)
	}
	return len(p), nil
}

func (l *logTally) line(b []byte) {
	if len(bytes.TrimSpace(b)) == 0 {
		return
	}
	var rec struct {
		Level string `json:"level"`
		Msg   string `json:"msg"`
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.Level == "" {
		l.counts["NOT JSON"]++
		if len(l.foreign) < maxForeign {
			l.foreign = append(l.foreign, string(b))
		}
		return
	}
	l.counts[rec.Level+" "+rec.Msg]++
	if rec.Level == "ERROR" && len(l.errs) < maxForeign {
		l.errs = append(l.errs, string(b))
	}
}

// snapshot returns the counts, the lines that are not JSON and the first
// ERROR lines.
func (l *logTally) snapshot() (map[string]int64, []string, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := make(map[string]int64, len(l.counts))
	for k, v := range l.counts {
		c[k] = v
	}
	return c, append([]string(nil), l.foreign...), append([]string(nil), l.errs...)
}

func (l *logTally) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.last)
}

// freeLoopbackAddr asks the kernel for a free TCP port on 127.0.0.1.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("soak: %w", err)
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// freeGossipAddr finds a port on 127.0.0.1 free for both TCP and UDP, as
// memberlist binds both.
func freeGossipAddr() (string, error) {
	for range 20 {
		addr, err := freeLoopbackAddr()
		if err != nil {
			return "", err
		}
		if pc, err := net.ListenPacket("udp", addr); err == nil {
			return addr, pc.Close()
		}
	}
	return "", errors.New("soak: no port on 127.0.0.1 free for both TCP and UDP")
}

// childEnv is the soak's environment without TOLLGATE_* variables, which
// would otherwise set the members' flags behind the soak's back.
func childEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "TOLLGATE_") {
			out = append(out, kv)
		}
	}
	return out
}
