package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/tollgate/tollgate/cluster"
)

// clusterFlags are serve's flags for running as one member of a fleet.
type clusterFlags struct {
	enabled   bool
	node      cluster.NodeConfig
	store     cluster.Config
	advertise string
	key       string
	keyFile   string
}

func (c *clusterFlags) register(fl *pflag.FlagSet) {
	c.node, c.store = cluster.DefaultNodeConfig(), cluster.DefaultConfig()
	fl.BoolVar(&c.enabled, "cluster", false, "join a fleet of sidecars sharing the Redis store: decide from local leases, gossip demand, spend and back-off, keep deciding on 1/N shares when Redis is away (needs --store redis and a gossip key)")
	fl.StringSliceVar(&c.node.Seeds, "cluster-seeds", nil, "gossip addresses (host:port) of members to join")
	fl.StringVar(&c.node.DNS, "cluster-dns", "", "a name whose addresses are members (a Kubernetes headless service), [name][:port]")
	fl.StringVar(&c.node.Name, "node-name", c.node.Name, "this member's name, unique in the fleet; serve refuses one a live member holds (default: the host name and the gossip port, unique on one host)")
	fl.StringVar(&c.node.BindAddr, "gossip-addr", c.node.BindAddr, "gossip listen address (UDP and TCP)")
	fl.IntVar(&c.node.BindPort, "gossip-port", c.node.BindPort, "gossip listen port (0: any free port)")
	fl.StringVar(&c.advertise, "gossip-advertise", "", "address others reach this member at, host[:port] (default: the listen address, or the host's private IP)")
	fl.StringVar(&c.key, "gossip-key", "", "base64 key of 16, 24 or 32 bytes that encrypts gossip (prefer TOLLGATE_GOSSIP_KEY or --gossip-key-file)")
	fl.StringVar(&c.keyFile, "gossip-key-file", "", "file holding the base64 gossip keys, one a line, the first the one gossip is sent with (a mounted Secret); reloaded on change, for a key rotation without a restart (docs/fleet.md)")
	fl.DurationVar(&c.store.LeaseTTL, "lease-ttl", c.store.LeaseTTL, "how long a slice of a pool is spent locally before what is left goes back")
	fl.DurationVar(&c.store.SliceTTL, "budget-slice-ttl", c.store.SliceTTL, "how long a slice of a budget is spent locally before it is settled")
	fl.Int64Var(&c.store.NearLimitPercent, "near-limit-percent", c.store.NearLimitPercent, "below this share of a pool or budget left, every call is decided in Redis")
}

// config completes the node's configuration: the key and the advertised
// address.
func (c *clusterFlags) config(log *slog.Logger) (cluster.NodeConfig, error) {
	n := c.node
	n.Logger = log
	key := strings.TrimSpace(c.key)
	if c.keyFile != "" {
		if key != "" {
			return n, errors.New("cluster: give the gossip key by --gossip-key or --gossip-key-file, not both")
		}
		b, err := os.ReadFile(c.keyFile)
		if err != nil {
			return n, fmt.Errorf("cluster: gossip key: %w", err)
		}
		keys, err := cluster.ParseKeys(b)
		if err != nil {
			return n, err
		}
		n.Key, n.Keys = keys[0], keys[1:]
		return c.advertised(n)
	}
	if key == "" {
		return n, errors.New("cluster: a gossip key is needed (--gossip-key-file, or TOLLGATE_GOSSIP_KEY): generate one with `openssl rand -base64 32`")
	}
	raw, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		return n, fmt.Errorf("cluster: the gossip key is not base64: %w", err)
	}
	n.Key = raw
	return c.advertised(n)
}

// advertised completes n with the advertised address and validates it.
func (c *clusterFlags) advertised(n cluster.NodeConfig) (cluster.NodeConfig, error) {
	if c.advertise != "" {
		host, port, err := net.SplitHostPort(c.advertise)
		if err != nil {
			host, port = c.advertise, ""
		}
		n.AdvertiseAddr = host
		if port != "" {
			if n.AdvertisePort, err = strconv.Atoi(port); err != nil {
				return n, fmt.Errorf("cluster: advertise port %q: %w", port, err)
			}
		}
	}
	return n, n.Validate()
}

// joinFleet starts this member's part in the fleet over shared. With a key
// file, it watches the file for a key rotation until stopKeys is called.
func (c *clusterFlags) joinFleet(shared cluster.Shared, reg prometheus.Registerer, log *slog.Logger) (f *cluster.Fleet, stopKeys func(), err error) {
	ncfg, err := c.config(log)
	if err != nil {
		return nil, nil, err
	}
	scfg := c.store
	scfg.Logger = log
	if f, err = cluster.Join(ncfg, scfg, shared, reg); err != nil {
		return nil, nil, err
	}
	stopKeys = func() {}
	if c.keyFile != "" {
		// The file was read a moment ago: a rotation written since is
		// picked up here.
		w, err := cluster.WatchKeys(c.keyFile, f.Node, log)
		if err != nil {
			return nil, nil, errors.Join(err, f.Close(context.Background()))
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = w.Run(ctx) }()
		stopKeys = func() { cancel(); <-done }
	}
	log.Info("joined the fleet", slog.String("node", f.Node.Name()), slog.String("gossip", f.Node.Addr()),
		slog.Int("members", f.Node.Live()), slog.Any("seeds", ncfg.Seeds), slog.String("dns", ncfg.DNS))
	return f, stopKeys, nil
}

// degraded reports the fleet's mode for /readyz: "" while Redis answers.
func degraded(f *cluster.Fleet) func() string {
	return func() string {
		mode, since := f.Store.Mode()
		if mode == "normal" {
			return ""
		}
		return fmt.Sprintf("outage since %s: Redis unreachable, deciding on this member's 1/%d share", since.UTC().Format(time.RFC3339), f.Node.Live())
	}
}

// leave hands back what the member holds and leaves the fleet.
func leave(f *cluster.Fleet, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return f.Close(ctx)
}
