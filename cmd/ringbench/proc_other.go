//go:build !linux

package main

import "syscall"

// childSysProcAttr: without Pdeathsig, a child exits when its stdin
// reaches EOF, i.e. when the parent is gone.
func childSysProcAttr() *syscall.SysProcAttr { return nil }
