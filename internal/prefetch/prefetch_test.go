package prefetch

import (
	"bytes"
	"testing"
)

// A prefetch reads and writes nothing: the memory around it is as it was,
// at either end of a buffer, and nothing faults.
func TestPrefetchChangesNothing(t *testing.T) {
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	want := bytes.Clone(buf)
	for _, i := range []int{0, 63, 64, len(buf) - 1} {
		Read(&buf[i])
		Write(&buf[i])
	}
	if !bytes.Equal(buf, want) {
		t.Fatal("a prefetch changed memory")
	}
}
