module github.com/ringipc/ringipc

go 1.26.8

require (
	github.com/cespare/xxhash/v2 v2.3.0
	github.com/edsrzf/mmap-go v1.2.0
	golang.org/x/sys v0.50.0
)

require go.uber.org/goleak v1.3.0
