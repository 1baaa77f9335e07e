// Package redirect writes the packet-filter rules of transparent mode
// (docs/transparent.md): in the pod's network namespace, every outbound TCP
// connection to port 443 is redirected to Envoy's transparent listener,
// except Envoy's own (matched by its uid, as service meshes do) and
// loopback's. IPv6 connections to 443 are refused with a reset instead
// (Envoy listens on IPv4 loopback only): clients fall back to IPv4, and
// nothing leaves unmetered. Other ports are untouched.
//
// The init container pipes the output to iptables-restore --noflush and
// ip6tables-restore --noflush, or to nft -f -.
package redirect

import (
	"errors"
	"fmt"
	"strings"
)

// Chain is the name of the chain (iptables) and table (nftables) the rules
// live in, so that they are easy to find and to remove.
const Chain = "TOLLGATE_OUTPUT"

// Config is what the rules need.
type Config struct {
	// EnvoyUID is the uid Envoy runs as: its connections to the real
	// providers must not be redirected back to itself.
	EnvoyUID int
	// ExtraUIDs are more uids left alone (e.g. Tollgate's own).
	ExtraUIDs []int
	// ListenPort is Envoy's transparent listener on 127.0.0.1.
	ListenPort int
	// Ports are the destination ports redirected (443).
	Ports []int
}

// DefaultConfig: the official Envoy image's uid, the shipped
// sidecar-transparent.yaml's listener, HTTPS.
func DefaultConfig() Config {
	return Config{EnvoyUID: 101, ListenPort: 15001, Ports: []int{443}}
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.EnvoyUID <= 0 {
		errs = append(errs, fmt.Errorf("redirect: Envoy's uid %d must be positive (root's traffic would never be redirected)", c.EnvoyUID))
	}
	for _, u := range c.ExtraUIDs {
		if u < 0 {
			errs = append(errs, fmt.Errorf("redirect: uid %d is negative", u))
		}
	}
	if c.ListenPort <= 0 || c.ListenPort > 65535 {
		errs = append(errs, fmt.Errorf("redirect: listener port %d out of range", c.ListenPort))
	}
	if len(c.Ports) == 0 {
		errs = append(errs, errors.New("redirect: no destination port to redirect"))
	}
	for _, p := range c.Ports {
		if p <= 0 || p > 65535 {
			errs = append(errs, fmt.Errorf("redirect: destination port %d out of range", p))
		}
		if p == c.ListenPort {
			errs = append(errs, fmt.Errorf("redirect: destination port %d is the listener's own", p))
		}
	}
	return errors.Join(errs...)
}

func (c Config) uids() []int { return append([]int{c.EnvoyUID}, c.ExtraUIDs...) }

// IPTables is the IPv4 script for iptables-restore --noflush: a nat chain
// of its own, jumped to from OUTPUT.
func (c Config) IPTables() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Tollgate transparent mode: outbound TCP to %s goes to Envoy on 127.0.0.1:%d\n", portList(c.Ports, ","), c.ListenPort)
	b.WriteString("*nat\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n", Chain)
	fmt.Fprintf(&b, "-A OUTPUT -p tcp -j %s\n", Chain)
	for _, u := range c.uids() {
		fmt.Fprintf(&b, "-A %s -m owner --uid-owner %d -j RETURN\n", Chain, u)
	}
	fmt.Fprintf(&b, "-A %s -d 127.0.0.0/8 -j RETURN\n", Chain)
	for _, p := range c.Ports {
		fmt.Fprintf(&b, "-A %s -p tcp --dport %d -j REDIRECT --to-ports %d\n", Chain, p, c.ListenPort)
	}
	b.WriteString("COMMIT\n")
	return b.String(), nil
}

// IP6Tables is the IPv6 script for ip6tables-restore --noflush: the same
// ports refused with a TCP reset.
func (c Config) IP6Tables() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("# Tollgate transparent mode: IPv6 TCP to the redirected ports is refused (Envoy listens on IPv4 loopback)\n")
	b.WriteString("*filter\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n", Chain)
	fmt.Fprintf(&b, "-A OUTPUT -p tcp -j %s\n", Chain)
	for _, u := range c.uids() {
		fmt.Fprintf(&b, "-A %s -m owner --uid-owner %d -j RETURN\n", Chain, u)
	}
	fmt.Fprintf(&b, "-A %s -d ::1/128 -j RETURN\n", Chain)
	for _, p := range c.Ports {
		fmt.Fprintf(&b, "-A %s -p tcp --dport %d -j REJECT --reject-with tcp-reset\n", Chain, p)
	}
	b.WriteString("COMMIT\n")
	return b.String(), nil
}

// NFT is the same rules as one nftables script for nft -f: a table of its
// own (replaced whole when applied again), both address families.
func (c Config) NFT() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	table := strings.ToLower(strings.TrimSuffix(Chain, "_OUTPUT"))
	uids := make([]string, 0, len(c.uids()))
	for _, u := range c.uids() {
		uids = append(uids, fmt.Sprint(u))
	}
	ports := "{ " + portList(c.Ports, ", ") + " }"
	var b strings.Builder
	fmt.Fprintf(&b, "# Tollgate transparent mode: outbound TCP to %s goes to Envoy on 127.0.0.1:%d\n", portList(c.Ports, ","), c.ListenPort)
	// Declaring then deleting makes the script work whether or not the
	// table exists already.
	fmt.Fprintf(&b, "table inet %s {}\ndelete table inet %s\n", table, table)
	fmt.Fprintf(&b, "table inet %s {\n", table)
	b.WriteString("\tchain nat_output {\n\t\ttype nat hook output priority -100; policy accept;\n")
	fmt.Fprintf(&b, "\t\tmeta skuid { %s } return\n", strings.Join(uids, ", "))
	b.WriteString("\t\tip daddr 127.0.0.0/8 return\n")
	fmt.Fprintf(&b, "\t\tmeta nfproto ipv4 tcp dport %s redirect to :%d\n", ports, c.ListenPort)
	b.WriteString("\t}\n")
	b.WriteString("\tchain filter_output {\n\t\ttype filter hook output priority 0; policy accept;\n")
	fmt.Fprintf(&b, "\t\tmeta skuid { %s } return\n", strings.Join(uids, ", "))
	b.WriteString("\t\tip6 daddr ::1 return\n")
	fmt.Fprintf(&b, "\t\tmeta nfproto ipv6 tcp dport %s reject with tcp reset\n", ports)
	b.WriteString("\t}\n}\n")
	return b.String(), nil
}

func portList(ps []int, sep string) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, sep)
}
