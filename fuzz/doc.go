// Package fuzz holds ringipc's fuzz targets. They drive the public API
// with hostile shared memory laid out as docs/design.md describes, so
// they also check that the spec's offsets are the code's.
//
// Run one for longer with, for example:
//
//	go test ./fuzz -run '^$' -fuzz '^FuzzRingDecoder$' -fuzztime 10m
//
// .ci/run gives each target a few seconds (FUZZTIME overrides).
package fuzz
