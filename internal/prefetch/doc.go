// Package prefetch asks the CPU to fetch a cache line before it is used,
// for the ring producers, which write their ring in order.
package prefetch
