//go:build !amd64

package prefetch

// Write does nothing here: only amd64 has the instruction wired.
func Write(p *byte) {}

// Read does nothing here.
func Read(p *byte) {}
