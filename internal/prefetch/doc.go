// Package prefetch asks the CPU to fetch a cache line before it is used:
// for the ring producers, which write their ring in order (Write), and
// for a consumer waiting at an empty ring's head for the record the
// producer will write there (Read).
package prefetch
