package redistest

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill redis-server when the test binary
// dies (a timeout, a kill), so no server outlives its tests.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
