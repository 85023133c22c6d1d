package futex

import (
	"errors"
	"time"
)

// ErrUnaligned is returned for a word whose address is not 4-byte aligned;
// the kernel would reject it with EINVAL.
var ErrUnaligned = errors.New("futex: word is not 4-byte aligned")

// Forever, passed as the timeout of Wait, waits without a time limit.
const Forever time.Duration = -1
