package main

import "syscall"

// childSysProcAttr makes the kernel kill a child when the thread that
// started it exits. Go keeps its threads for the life of the process
// (nothing here locks one and lets it go), so in practice: when the parent
// dies. A child also exits on its own when its stdin reaches EOF.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
