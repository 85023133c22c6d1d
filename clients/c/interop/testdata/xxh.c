/* xxh.c: prints ripc_xxh64 (seed 0) of the first n bytes of a fixed
 * pattern for n = 0..299, one hex value a line, for TestXXH64. */
#include <stdio.h>

#include "ringipc.h"

int main(void)
{
	unsigned char b[300];
	for (int i = 0; i < 300; i++)
		b[i] = (unsigned char)(i * 131 + 7);
	for (int n = 0; n < 300; n++)
		printf("%016llx\n", (unsigned long long)ripc_xxh64(b, (size_t)n, 0));
	return 0;
}
