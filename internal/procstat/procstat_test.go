package procstat_test

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/procstat"
)

func TestCPU(t *testing.T) {
	// Burn CPU until the kernel has counted a tick of it (bounded).
	var self time.Duration
	var err error
	for deadline, x := time.Now().Add(2*time.Second), 0; self == 0 && time.Now().Before(deadline); {
		for i := range 1_000_000 {
			x ^= i
		}
		self, err = procstat.CPU("self")
		require.NoError(t, err)
	}
	assert.Positive(t, self, "a process that spun for a while used CPU")
	assert.Zero(t, self%(time.Second/procstat.UserHZ), "a whole number of ticks")

	_, err = procstat.CPU(strconv.Itoa(1 << 30))
	assert.Error(t, err, "no such process")
}

func TestMachineCPU(t *testing.T) {
	all, err := procstat.MachineCPU()
	require.NoError(t, err)
	self, err := procstat.CPU("self")
	require.NoError(t, err)
	assert.GreaterOrEqual(t, all, self, "the machine has used at least what this process has")
}

func TestRSS(t *testing.T) {
	rss, err := procstat.RSS("self")
	require.NoError(t, err)
	assert.Greater(t, rss, int64(1<<20), "a Go test binary is resident in more than a megabyte")
	assert.Zero(t, rss%1024, "read in kB")

	_, err = procstat.RSS(strconv.Itoa(1 << 30))
	assert.Error(t, err, "no such process")
}

func TestTCPConns(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	n, err := procstat.TCPConns("self", port)
	require.NoError(t, err)
	assert.Zero(t, n, "a listener is not a connection to the port")

	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", l.Addr().String())
		require.NoError(t, err)
		conns = append(conns, c)
	}
	n, err = procstat.TCPConns("self", port)
	require.NoError(t, err)
	assert.Equal(t, 3, n, "three connections to the port (the accepted ends have other remote ports)")
	for _, c := range conns {
		require.NoError(t, c.Close())
	}
}
