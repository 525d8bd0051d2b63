package testenv

import (
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
)

// Ports returns n distinct loopback ports, free when returned, for servers that are started
// (or restarted) on a known port. They are drawn from below Linux's ephemeral range (32768
// up): a port the kernel hands out to ":0" listeners or to outgoing connections could be taken
// by another test, or by a client's own connection, between the pick and the bind, or while a
// killed server is down before its restart.
func Ports(t testing.TB, n int) []int {
	t.Helper()
	var out []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000 {
			t.Fatal("no free loopback ports below the ephemeral range")
		}
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue // taken
		}
		ls = append(ls, l)
		out = append(out, port)
	}
	return out
}
