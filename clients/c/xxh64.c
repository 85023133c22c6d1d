/*
 * xxh64.c: XXH64, the 64-bit xxHash, as the ring and segment checksums
 * use it (docs/design.md §2.3, docs/segment.md).
 *
 * Our own short implementation rather than the machine's libxxhash: the
 * client is meant to build with a C compiler and libc alone, and the
 * algorithm is small and fully specified (xxhash's spec, xxhash_spec.md).
 * Speed matters only for payload checksums, and this follows the
 * reference structure (four 8-byte lanes per 32-byte stripe).
 */
#include <stdint.h>
#include <string.h>

#include "ringipc.h"

#define P1 11400714785074694791ull
#define P2 14029467366897019727ull
#define P3 1609587929392839161ull
#define P4 9650029242287828579ull
#define P5 2870177450012600261ull

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* Little-endian loads; memcpy compiles to one move and has no alignment
 * requirement. */
static inline uint64_t le64(const unsigned char *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

static inline uint32_t le32(const unsigned char *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap32(v);
#endif
	return v;
}

static inline uint64_t round1(uint64_t acc, uint64_t lane)
{
	acc += lane * P2;
	acc = rotl(acc, 31);
	return acc * P1;
}

static inline uint64_t merge(uint64_t h, uint64_t acc)
{
	h ^= round1(0, acc);
	return h * P1 + P4;
}

uint64_t ripc_xxh64(const void *in, size_t len, uint64_t seed)
{
	const unsigned char *p = in, *end = p + len;
	uint64_t h;

	if (len >= 32) {
		uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
		const unsigned char *limit = end - 32;
		do {
			v1 = round1(v1, le64(p));
			v2 = round1(v2, le64(p + 8));
			v3 = round1(v3, le64(p + 16));
			v4 = round1(v4, le64(p + 24));
			p += 32;
		} while (p <= limit);
		h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
		h = merge(h, v1);
		h = merge(h, v2);
		h = merge(h, v3);
		h = merge(h, v4);
	} else {
		h = seed + P5;
	}
	h += (uint64_t)len;
	for (; p + 8 <= end; p += 8) {
		h ^= round1(0, le64(p));
		h = rotl(h, 27) * P1 + P4;
	}
	if (p + 4 <= end) {
		h ^= (uint64_t)le32(p) * P1;
		h = rotl(h, 23) * P2 + P3;
		p += 4;
	}
	for (; p < end; p++) {
		h ^= (uint64_t)(*p) * P5;
		h = rotl(h, 11) * P1;
	}
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}
