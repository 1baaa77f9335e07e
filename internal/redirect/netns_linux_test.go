package redirect_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redirect"
)

// The helper processes: the test binary run again inside the namespace
// (ip netns exec), told what to do by the environment.
const (
	helperEnv = "TOLLGATE_NETNS_HELPER" // "serve" or "dial"
	listenEnv = "TOLLGATE_NETNS_LISTEN" // serve: name=addr,...
	addrEnv   = "TOLLGATE_NETNS_ADDR"   // dial: where to
	uidEnv    = "TOLLGATE_NETNS_UID"    // dial: as whom
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "serve":
		os.Exit(serveHelper())
	case "dial":
		os.Exit(dialHelper())
	}
	os.Exit(m.Run())
}

// serveHelper listens on each name=addr and answers every connection with
// one line: the listener's name and the connection's original destination
// (SO_ORIGINAL_DST, what REDIRECT rewrote; "-" when there is none). It
// prints "ready" once all listen, and exits when its stdin closes.
func serveHelper() int {
	for _, spec := range strings.Split(os.Getenv(listenEnv), ",") {
		name, addr, _ := strings.Cut(spec, "=")
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Println("listen", addr, err)
			return 1
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s %s\n", name, originalDst(c))
				_ = c.Close()
			}
		}()
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// originalDst reads SO_ORIGINAL_DST (80 at SOL_IP): a sockaddr_in, fetched
// through the one getsockopt wrapper of that size the syscall package has.
func originalDst(c net.Conn) string {
	tc, ok := c.(*net.TCPConn)
	if !ok || tc.LocalAddr().(*net.TCPAddr).IP.To4() == nil {
		return "-"
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return "-"
	}
	out := "-"
	_ = raw.Control(func(fd uintptr) {
		m, err := syscall.GetsockoptIPv6Mreq(int(fd), syscall.IPPROTO_IP, 80)
		if err != nil {
			return
		}
		port := int(m.Multiaddr[2])<<8 | int(m.Multiaddr[3])
		out = net.JoinHostPort(net.IP(m.Multiaddr[4:8]).String(), strconv.Itoa(port))
	})
	return out
}

// dialHelper drops to the uid, connects, and prints the line it got back,
// or "error".
func dialHelper() int {
	uid, err := strconv.Atoi(os.Getenv(uidEnv))
	if err != nil {
		fmt.Println("error: uid", err)
		return 1
	}
	if err := errorsJoin(syscall.Setgroups(nil), syscall.Setgid(uid), syscall.Setuid(uid)); err != nil {
		fmt.Println("error: drop to uid", uid, err)
		return 1
	}
	c, err := net.DialTimeout("tcp", os.Getenv(addrEnv), 5*time.Second)
	if err != nil {
		fmt.Println("error:", err)
		return 0
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Println("error: read", err)
		return 0
	}
	fmt.Print(line)
	return 0
}

func errorsJoin(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// need finds a tool, or skips outside CI (make test installs them; see
// TEST_TOOLS in the Makefile) and fails in it.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing: make deps installs it", tool)
			}
			t.Skipf("%s is not installed (make deps installs it; the test runs under make test)", tool)
		}
	}
}

const (
	providerV4 = "203.0.113.10" // documentation address (RFC 5737), on the namespace's loopback
	providerV6 = "2001:db8::10" // documentation address (RFC 3849)
	envoyUID   = 101
	workerUID  = 1000
)

func ipRun(t *testing.T, stdin string, args ...string) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%v: %s", args, out)
}

// newNamespace makes a network namespace with loopback up and the
// "providers" on its loopback, removed when the test ends.
func newNamespace(t *testing.T, name string) string {
	t.Helper()
	ns := fmt.Sprintf("tollgate-%s-%d", name, os.Getpid())
	ipRun(t, "", "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	in := func(args ...string) { ipRun(t, "", append([]string{"ip", "netns", "exec", ns}, args...)...) }
	in("ip", "link", "set", "lo", "up")
	// On loopback: a dummy link would do as well, but not every kernel
	// that runs the tests has the dummy module.
	in("ip", "addr", "add", providerV4+"/32", "dev", "lo")
	in("ip", "addr", "add", providerV6+"/128", "dev", "lo", "nodad")
	return ns
}

// startServers runs serveHelper inside ns: Envoy's transparent listener on
// 127.0.0.1, and the "provider" on 443 and 80 of its addresses.
func startServers(t *testing.T, ns string, listenPort int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=serve", listenEnv+"="+strings.Join([]string{
		"envoy=127.0.0.1:" + strconv.Itoa(listenPort),
		"provider=" + net.JoinHostPort(providerV4, "443"),
		"plain80=" + net.JoinHostPort(providerV4, "80"),
		"provider6=" + net.JoinHostPort(providerV6, "443"),
	}, ","))
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = stdin.Close()
		cancel()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ready\n", line)
}

// dial connects from inside ns as uid and returns what answered.
func dial(t *testing.T, ns string, uid int, addr string) string {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=dial", addrEnv+"="+addr, uidEnv+"="+strconv.Itoa(uid))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return strings.TrimSpace(string(out))
}

// listener is the name of the listener that answered a dial.
func listener(answer string) string {
	name, _, _ := strings.Cut(answer, " ")
	return name
}

// TestRedirectInNamespace applies the generated rules, with iptables and
// with nftables, in a namespace of its own, and shows: a worker's :443
// connection to a provider address lands on the local listener (which sees
// the original destination); Envoy's uid reaches the provider itself; port
// 80 is untouched; a worker's IPv6 :443 is refused while Envoy's goes.
func TestRedirectInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates a network namespace and packet-filter rules")
	}
	cfg := redirect.DefaultConfig()
	cfg.EnvoyUID = envoyUID

	backends := map[string]struct {
		tools []string
		apply func(t *testing.T, ns string)
	}{
		"iptables": {tools: []string{"ip", "iptables-restore", "ip6tables-restore"}, apply: func(t *testing.T, ns string) {
			v4, err := cfg.IPTables()
			require.NoError(t, err)
			v6, err := cfg.IP6Tables()
			require.NoError(t, err)
			ipRun(t, v4, "ip", "netns", "exec", ns, "iptables-restore", "--noflush")
			ipRun(t, v6, "ip", "netns", "exec", ns, "ip6tables-restore", "--noflush")
		}},
		"nftables": {tools: []string{"ip", "nft"}, apply: func(t *testing.T, ns string) {
			script, err := cfg.NFT()
			require.NoError(t, err)
			ipRun(t, script, "ip", "netns", "exec", ns, "nft", "-f", "-")
			ipRun(t, script, "ip", "netns", "exec", ns, "nft", "-f", "-") // applying twice replaces, never doubles
		}},
	}
	for name, be := range backends {
		t.Run(name, func(t *testing.T) {
			need(t, be.tools...)
			ns := newNamespace(t, name[:2])
			startServers(t, ns, cfg.ListenPort)

			// Before the rules: everyone reaches the provider.
			assert.Equal(t, "provider", listener(dial(t, ns, workerUID, net.JoinHostPort(providerV4, "443"))))

			be.apply(t, ns)
			v4 := net.JoinHostPort(providerV4, "443")
			assert.Equal(t, "envoy "+v4, dial(t, ns, workerUID, v4), "the worker's HTTPS goes to Envoy, which knows where it was going")
			assert.Equal(t, "provider", listener(dial(t, ns, envoyUID, v4)), "Envoy's own connection is not redirected")
			assert.Equal(t, "plain80", listener(dial(t, ns, workerUID, net.JoinHostPort(providerV4, "80"))), "other ports are untouched")
			v6 := net.JoinHostPort(providerV6, "443")
			assert.Contains(t, dial(t, ns, workerUID, v6), "error:", "the worker's IPv6 HTTPS is refused, not sent around Envoy")
			assert.Equal(t, "provider6", listener(dial(t, ns, envoyUID, v6)))
		})
	}
}
