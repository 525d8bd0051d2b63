package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The load generator: the same clientv3 code for every target.

// dial opens n clients to endpoint.
func dial(ctx context.Context, endpoint string, n int) ([]*clientv3.Client, error) {
	endpoint = strings.TrimPrefix(endpoint, "http://")
	var cs []*clientv3.Client
	for range n {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{endpoint},
			DialTimeout: 10 * time.Second,
			Logger:      zap.NewNop(),
			Context:     ctx,
		})
		if err != nil {
			closeAll(cs)
			return nil, fmt.Errorf("dial %s: %w", endpoint, err)
		}
		cs = append(cs, c)
	}
	return cs, nil
}

func closeAll(cs []*clientv3.Client) {
	for _, c := range cs {
		c.Close()
	}
}

// opTimeout bounds a single request of the load generator.
const opTimeout = 30 * time.Second

// stamp is the header of every value the load generator writes: a sequence number and the time
// the put was sent (on clock), so a watcher can tell which put an event is and how long it took.
type stamp struct {
	seq  uint64
	sent time.Duration
}

const stampSize = 16

// clock is a monotonic clock shared by the writers and watchers of one run.
type clock struct{ base time.Time }

func newClock() clock              { return clock{base: time.Now()} }
func (c clock) now() time.Duration { return time.Since(c.base) }

// value builds a value of size bytes (at least stampSize) carrying st.
func (st stamp) value(size int) string {
	b := make([]byte, max(size, stampSize))
	binary.BigEndian.PutUint64(b, st.seq)
	binary.BigEndian.PutUint64(b[8:], uint64(st.sent))
	for i := stampSize; i < len(b); i++ {
		b[i] = 'x'
	}
	return string(b)
}

func readStamp(v []byte) (stamp, bool) {
	if len(v) < stampSize {
		return stamp{}, false
	}
	return stamp{seq: binary.BigEndian.Uint64(v), sent: time.Duration(binary.BigEndian.Uint64(v[8:]))}, true
}

// latencies records durations from many goroutines into sharded HDR histograms (1 µs to
// 10 min, three significant digits).
type latencies struct {
	shards [64]struct {
		sync.Mutex
		h *hdrhistogram.Histogram
	}
}

func newLatencies() *latencies {
	l := &latencies{}
	for i := range l.shards {
		l.shards[i].h = hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3)
	}
	return l
}

// record adds ds to shard i (any int; callers pass something that spreads, e.g. a watcher index).
func (l *latencies) record(i int, ds ...time.Duration) {
	s := &l.shards[uint(i)%uint(len(l.shards))]
	s.Lock()
	for _, d := range ds {
		_ = s.h.RecordValue(max(1, d.Microseconds()))
	}
	s.Unlock()
}

func (l *latencies) merged() *hdrhistogram.Histogram {
	h := hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3)
	for i := range l.shards {
		s := &l.shards[i]
		s.Lock()
		h.Merge(s.h)
		s.Unlock()
	}
	return h
}

// quantilesMs puts the p50, p99 and (if p999) p99.9 of l into v, in milliseconds, under
// prefix+"_p50_ms" and so on. With no samples the figures are left unknown.
func (l *latencies) quantilesMs(v map[string]float64, prefix string, p999 bool) {
	h := l.merged()
	if h.TotalCount() == 0 {
		return
	}
	ms := func(q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }
	v[prefix+"_p50_ms"] = ms(50)
	v[prefix+"_p99_ms"] = ms(99)
	if p999 {
		v[prefix+"_p999_ms"] = ms(99.9)
	}
}

// counter is a total many goroutines add to.
type counter struct{ atomic.Int64 }

func (c *counter) get() int64 { return c.Load() }

// putUsage adds the server and client cost of an interval to a row's values.
func putUsage(v map[string]float64, u usage) {
	v["client_cpu_pct"] = 100 * u.clientCoreFrac
	if !u.known {
		return
	}
	v["cpu_s"] = u.cpu
	v["peak_rss_mib"] = u.peakRSS / (1 << 20)
	v["etcd_cpu_s"] = u.etcdCPU
	v["etcd_peak_rss_mib"] = u.etcdPeakRSS / (1 << 20)
}

// usageColumns are the columns putUsage fills, in table order.
func usageColumns() []Column {
	return []Column{
		{Key: "cpu_s", Header: "server CPU s", Digits: 1, Ratio: true},
		{Key: "etcd_cpu_s", Header: "etcd CPU s", Digits: 1, Ratio: true},
		{Key: "peak_rss_mib", Header: "server peak RSS MiB", Digits: 0, Ratio: true},
		{Key: "client_cpu_pct", Header: "client CPU %", Digits: 0},
	}
}

// perSecond is n over d, or NaN for an empty interval.
func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return math.NaN()
	}
	return float64(n) / d.Seconds()
}

// currentRevision reads the target's revision with a linearizable request.
func currentRevision(ctx context.Context, c *clientv3.Client) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := c.Get(ctx, "bench-revision-probe", clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// writeKeys puts n values of size bytes under prefix (keys prefix%08d, cycling over keys of
// them) with the given concurrency. It returns the revision of the first and last write.
func writeKeys(ctx context.Context, c *clientv3.Client, prefix string, n, keys, size, concurrency int) (first, last int64, err error) {
	var next, firstRev, lastRev atomic.Int64
	firstRev.Store(math.MaxInt64)
	val := stamp{}.value(size)
	var wg sync.WaitGroup
	errs := make(chan error, concurrency)
	for range concurrency {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || ctx.Err() != nil {
					return
				}
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				resp, err := c.Put(octx, fmt.Sprintf("%s%08d", prefix, i%int64(keys)), val)
				cancel()
				if err != nil {
					errs <- err
					return
				}
				rev := resp.Header.Revision
				for cur := firstRev.Load(); rev < cur && !firstRev.CompareAndSwap(cur, rev); cur = firstRev.Load() {
				}
				for cur := lastRev.Load(); rev > cur && !lastRev.CompareAndSwap(cur, rev); cur = lastRev.Load() {
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, fmt.Errorf("writing %s: %w", prefix, err)
	}
	return firstRev.Load(), lastRev.Load(), ctx.Err()
}
