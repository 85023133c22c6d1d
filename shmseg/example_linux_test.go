package shmseg_test

import (
	"fmt"
	"log"
	"os"

	"github.com/ringipc/ringipc/shmseg"
)

func ExampleCreateMemfd() {
	seg, err := shmseg.CreateMemfd("example", shmseg.Geometry{Kind: 1, Params: [6]uint64{4096}}, 4096)
	if err != nil {
		log.Fatal(err)
	}
	defer seg.Close()
	copy(seg.Payload(), "hello")

	// Another process would receive seg.File() through SCM_RIGHTS or
	// exec.Cmd.ExtraFiles; attaching to a duplicate here shows the same.
	dup, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", seg.File().Fd()), os.O_RDWR, 0)
	if err != nil {
		log.Fatal(err)
	}
	peer, err := shmseg.OpenFile(dup)
	if err != nil {
		dup.Close()
		log.Fatal(err)
	}
	defer peer.Close()
	fmt.Println(peer.Geometry().Kind, peer.Geometry().Params[0], string(peer.Payload()[:5]))
	// Output: 1 4096 hello
}
