// Package procstat reads what Linux's /proc says of a process and of the
// machine: CPU time and resident memory. The measuring tools (`tollgate
// floor`, cmd/soak) read the servers they measure from outside, as an
// operator would.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// UserHZ is the unit of utime and stime in /proc/<pid>/stat: USER_HZ,
// which Linux fixes at 100 for user space on every architecture.
const UserHZ = 100

// CPU is a process's user plus system CPU time so far, from
// /proc/<pid>/stat (pid may be "self"), to the nearest 10 ms.
func CPU(pid string) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, fmt.Errorf("procstat: CPU: %w", err)
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields that follow start after its last ')'.
	var fs []string
	if i := bytes.LastIndexByte(b, ')'); i >= 0 {
		fs = strings.Fields(string(b[i+1:]))
	}
	if len(fs) < 13 {
		return 0, fmt.Errorf("procstat: CPU: /proc/%s/stat: unexpected %q", pid, b)
	}
	utime, err1 := strconv.ParseInt(fs[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(fs[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("procstat: CPU: /proc/%s/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * time.Second / UserHZ, nil
}

// MachineCPU is the CPU time all processes have used so far, from the
// first line of /proc/stat: everything but idle and iowait (guest time is
// already in user).
func MachineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("procstat: machine CPU: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fs := strings.Fields(line)
	if len(fs) < 9 || fs[0] != "cpu" {
		return 0, fmt.Errorf("procstat: machine CPU: /proc/stat: unexpected %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
		n, err := strconv.ParseInt(fs[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("procstat: machine CPU: /proc/stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / UserHZ, nil
}

// RSS is a process's resident set size in bytes: VmRSS of
// /proc/<pid>/status (pid may be "self"), what the kernel charges it.
func RSS(pid string) (int64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, fmt.Errorf("procstat: RSS: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		v, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(v) // "123456 kB"
		if len(f) == 2 && f[1] == "kB" {
			if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				return kb << 10, nil
			}
		}
		return 0, fmt.Errorf("procstat: RSS: /proc/%s/status: unexpected %q", pid, strings.TrimSpace(line))
	}
	return 0, fmt.Errorf("procstat: RSS: /proc/%s/status has no VmRSS", pid)
}

// TCPConns counts a process's TCP connections (IPv4) to a remote port:
// its socket descriptors (/proc/<pid>/fd) whose entry in
// /proc/<pid>/net/tcp names that port. A pool of connections to a server
// (Redis) grows with load up to its size and stays: who counts open files
// for leaks counts those apart.
func TCPConns(pid string, port int) (int, error) {
	ents, err := os.ReadDir("/proc/" + pid + "/fd")
	if err != nil {
		return 0, fmt.Errorf("procstat: sockets: %w", err)
	}
	inodes := map[string]bool{}
	for _, e := range ents {
		link, err := os.Readlink("/proc/" + pid + "/fd/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	b, err := os.ReadFile("/proc/" + pid + "/net/tcp")
	if err != nil {
		return 0, fmt.Errorf("procstat: sockets: %w", err)
	}
	n := 0
	for line := range strings.Lines(string(b)) {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		f := strings.Fields(line)
		if len(f) < 10 || f[0] == "sl" {
			continue
		}
		_, hexPort, ok := strings.Cut(f[2], ":")
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if ok && err == nil && int(p) == port && inodes[f[9]] {
			n++
		}
	}
	return n, nil
}
