package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel end a child when the demo dies (a kill,
// a crash), so no Tollgate or fakeapi outlives it.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
