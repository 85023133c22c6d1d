package ring

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
)

// ProcessAlive reports whether the process o names still runs: its
// /proc entry exists, it is not a zombie, and (when known) it started at
// o.StartTime, so a recycled pid does not pass for the old owner. It
// assumes the caller shares the owner's PID namespace; an error reading
// /proc other than "does not exist" counts as alive, since skipping a live
// producer's claim would lose its record.
func ProcessAlive(o Owner) bool {
	if o.PID <= 0 {
		return false
	}
	state, start, err := readStat(o.PID)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil {
		return true
	}
	if state == 'Z' || state == 'X' || state == 'x' {
		return false
	}
	return o.StartTime == 0 || start == o.StartTime
}

func processStartTime(pid int) (uint64, error) {
	_, start, err := readStat(pid)
	if err != nil {
		return 0, fmt.Errorf("read own start time: %w", err)
	}
	return start, nil
}

// readStat returns the state (field 3) and start time (field 22) from
// /proc/PID/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func readStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	start, err = strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat start time: %w", pid, err)
	}
	return f[0][0], start, nil
}
