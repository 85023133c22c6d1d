// Package interop holds the tests that run the C client of clients/c
// against the Go server: `go test ./clients/c/interop` builds the client
// with the machine's C compiler (cc) and skips, saying so, where there is
// none. The C sources live outside this directory (clients/c and
// testdata/), since a Go package directory that does not use cgo may not
// contain .c files.
package interop
