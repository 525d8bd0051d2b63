package main

import (
	"flag"

	"github.com/watchgate/watchgate/gateway"
)

// protectionFlags set the gateway's per-client limits (gateway.Protection). All are off by
// default, so a gateway behaves as etcd does until an operator opts in.
type protectionFlags struct {
	rate             float64
	burst            int
	maxExpensive     int
	maxResponseBytes int64
}

func (f *protectionFlags) register(fs *flag.FlagSet) {
	fs.Float64Var(&f.rate, "rate-limit", 0, "requests per second one client may make (each unary call and each stream opened counts one); past it etcd's \"too many requests\" error; 0 for no limit")
	fs.IntVar(&f.burst, "rate-limit-burst", 0, "requests one client may make at once beyond --rate-limit (default: --rate-limit rounded up)")
	fs.IntVar(&f.maxExpensive, "max-concurrent-expensive", 0, "expensive requests (ranges over more than one key, whatever their limit, and txns holding one) one client may have in flight; 0 for no limit")
	fs.Int64Var(&f.maxResponseBytes, "max-range-response-bytes", 0, "largest range response in `bytes`; a larger one fails, telling the client to page with limit; 0 for no limit")
}

// apply sets o.Protection from the flags.
func (f *protectionFlags) apply(o *gateway.Options) {
	o.Protection = gateway.Protection{
		RequestsPerSecond:      f.rate,
		Burst:                  f.burst,
		MaxConcurrentExpensive: f.maxExpensive,
		MaxRangeResponseBytes:  f.maxResponseBytes,
	}
}
