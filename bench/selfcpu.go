package bench

import (
	"runtime"
	"syscall"
	"time"
)

// selfCPU is the CPU time (user + system, in seconds) this process has used so far.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return (time.Duration(ru.Utime.Nano()) + time.Duration(ru.Stime.Nano())).Seconds()
}

func numCPU() int { return runtime.NumCPU() }
