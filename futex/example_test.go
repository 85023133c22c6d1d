package futex_test

import (
	"fmt"
	"log"
	"sync/atomic"

	"github.com/ringipc/ringipc/futex"
)

// A waiter sleeps until a word changes; the side that changes it wakes
// it. Wait returns at once if the word no longer holds the value, and may
// return spuriously, so the waiter re-checks in a loop. Between processes
// the word would live in shared memory.
func Example() {
	var word uint32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for atomic.LoadUint32(&word) == 0 {
			if err := futex.Wait(&word, 0, futex.Forever); err != nil {
				log.Fatal(err)
			}
		}
		fmt.Println("the word is now", atomic.LoadUint32(&word))
	}()
	atomic.StoreUint32(&word, 1)
	if _, err := futex.Wake(&word, 1); err != nil {
		log.Fatal(err)
	}
	<-done
	// Output: the word is now 1
}
