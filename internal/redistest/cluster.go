package redistest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of masters only (no replicas), each a
// redis-server child process on 127.0.0.1 with its data and cluster config
// file in a temporary directory of its own. The 16384 slots are split in
// equal ranges, one per master. A master stopped is failed by the others
// only after 15 s (the node timeout): a test that stops one and starts it
// again sees the rest of the cluster serve meanwhile.
type Cluster struct {
	Masters []*Server
	buses   []int // the masters' cluster bus ports
}

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// StartCluster starts masters redis-servers in cluster mode and forms a
// cluster of them: slots assigned (CLUSTER ADDSLOTSRANGE), nodes introduced
// (CLUSTER MEET), then waits until every node reports cluster_state:ok and
// knows every master.
func StartCluster(masters int) (*Cluster, error) {
	if masters < 1 || masters > 16 {
		return nil, fmt.Errorf("redistest: a cluster of %d masters: want 1 to 16", masters)
	}
	c := &Cluster{}
	for range masters {
		bus := 0
		s, err := startWith(func(_ int, dir string) ([]string, error) {
			// The bus port is chosen, not port+10000, which may be past 65535.
			var err error
			if bus, err = freePort(); err != nil {
				return nil, err
			}
			return []string{"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"),
				"--cluster-port", strconv.Itoa(bus), "--cluster-node-timeout", "15000",
				"--cluster-require-full-coverage", "yes"}, nil
		})
		if err != nil {
			return nil, errors.Join(err, c.Close())
		}
		c.Masters = append(c.Masters, s)
		c.buses = append(c.buses, bus)
	}
	if err := c.form(); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

// form assigns the slots, introduces the nodes to the first and waits until
// the cluster is whole.
func (c *Cluster) form() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := len(c.Masters)
	for i, s := range c.Masters {
		cl := redis.NewClient(&redis.Options{Addr: s.Addr})
		lo, hi := i*clusterSlots/n, (i+1)*clusterSlots/n-1
		err := cl.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err()
		if err == nil && i > 0 {
			host, port, _ := strings.Cut(c.Masters[0].Addr, ":")
			err = cl.Do(ctx, "CLUSTER", "MEET", host, port, c.buses[0]).Err()
		}
		_ = cl.Close()
		if err != nil {
			return fmt.Errorf("redistest: form the cluster on %s: %w", s.Addr, err)
		}
	}
	for _, s := range c.Masters {
		cl := redis.NewClient(&redis.Options{Addr: s.Addr})
		err := waitWhole(ctx, cl, n)
		_ = cl.Close()
		if err != nil {
			return fmt.Errorf("redistest: cluster node %s: %w", s.Addr, err)
		}
	}
	return nil
}

// waitWhole waits until a node says the cluster is ok and knows n masters.
func waitWhole(ctx context.Context, cl *redis.Client, n int) error {
	var last string
	for {
		info, err := cl.ClusterInfo(ctx).Result()
		if err == nil {
			last = info
			if strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(n)+"\r\n") &&
				strings.Contains(info, "cluster_size:"+strconv.Itoa(n)+"\r\n") {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not whole (%v): %s", err, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Addrs are the masters' host:port, the seeds of a cluster client.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Masters))
	for i, s := range c.Masters {
		out[i] = s.Addr
	}
	return out
}

// Client returns a cluster client of the cluster, closed when tb ends.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	tb.Cleanup(func() { _ = cl.Close() })
	return cl
}

// Close stops every master and removes their data.
func (c *Cluster) Close() error {
	var errs []error
	for _, s := range c.Masters {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// MainCluster runs a package's tests with one server and one cluster of
// masters started for all of them:
//
//	var srv *redistest.Server
//	var rc *redistest.Cluster
//	func TestMain(m *testing.M) { os.Exit(redistest.MainCluster(m, &srv, &rc, 3)) }
func MainCluster(m *testing.M, srv **Server, cl **Cluster, masters int) int {
	s, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c, err := StartCluster(masters)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = s.Close()
		return 1
	}
	*srv, *cl = s, c
	code := m.Run()
	if err := errors.Join(c.Close(), s.Close()); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return code
}
