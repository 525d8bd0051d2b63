package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchIdle is many watchers on distinct keys that never change: what each watcher costs the
// servers at rest, and how long a fleet of them takes to set up.
type WatchIdle struct {
	Watchers int
	Streams  int
	Conns    int
}

// DefaultWatchIdle is the default size: 10,000 watchers on 100 streams.
var DefaultWatchIdle = WatchIdle{Watchers: 10000, Streams: 100, Conns: 10}

func (s WatchIdle) Name() string { return "watch-idle" }

func (s WatchIdle) title() string {
	return fmt.Sprintf("%d idle watchers on distinct keys (%d streams, %d connections)", s.Watchers, s.Streams, s.Conns)
}

func (s WatchIdle) params() map[string]any {
	return map[string]any{"watchers": s.Watchers, "streams": s.Streams, "conns": s.Conns}
}

func (s WatchIdle) validate() error {
	if s.Watchers < 1 || s.Streams < 1 || s.Conns < 1 {
		return errors.New("watch-idle: watchers, streams and conns must be positive")
	}
	return nil
}

func (s WatchIdle) columns() []Column {
	return append([]Column{
		{Key: "create_s", Header: "create s", Digits: 2, Ratio: true},
		{Key: "creates_per_s", Header: "creates/s", Digits: 0, Ratio: true},
		{Key: "heap_per_watcher_b", Header: "heap B/watcher", Digits: 0, Ratio: true},
		{Key: "etcd_heap_per_watcher_b", Header: "etcd heap B/watcher", Digits: 0, Ratio: true},
		{Key: "rss_per_watcher_b", Header: "RSS B/watcher", Digits: 0, Ratio: true},
	}, usageColumns()...)
}

func (s WatchIdle) run(ctx context.Context, r *runner, d *deployment) []Row {
	return tieredRow(ctx, d, func(v map[string]float64) error { return s.measure(ctx, r, d, v) })
}

// heapTotal sums the heap in use of d's processes after a GC in each, and returns etcd's apart.
func heapTotal(ctx context.Context, d *deployment) (total, etcd float64, err error) {
	for i, c := range d.procs() {
		h, err := c.heap(ctx)
		if err != nil {
			return 0, 0, err
		}
		total += float64(h.HeapInuse)
		if i == 0 {
			etcd = float64(h.HeapInuse)
		}
	}
	return total, etcd, nil
}

func (s WatchIdle) measure(ctx context.Context, r *runner, d *deployment, v map[string]float64) error {
	ws, err := openWatchSet(ctx, d.endpoint, s.Conns, s.Streams)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer ws.close()
	defer cancel()

	// A first watch per stream opens the streams, so that their own cost is not per watcher.
	for i := range s.Streams {
		ws.watch(wctx, i, "bench/idle/stream", nil, func(clientv3.WatchResponse) {})
	}
	if err := r.await(ctx, "streams opened", ws.created.get, int64(s.Streams)); err != nil {
		return err
	}
	heap0, etcdHeap0, herr := heapTotal(ctx, d)
	m := startMeter(d)
	profiled := r.profile(ctx, d, "")
	rss0, _ := m.rss()

	// Each stream creates its watchers one after another (clientv3 waits for a create's answer
	// before the next on its stream), all streams at once, as a large client's goroutines do.
	start := time.Now()
	var creating sync.WaitGroup
	for j := range min(s.Streams, s.Watchers) {
		creating.Go(func() {
			for i := j; i < s.Watchers; i += s.Streams {
				ws.watch(wctx, i, fmt.Sprintf("bench/idle/%08d", i), nil, func(clientv3.WatchResponse) {})
			}
		})
	}
	creating.Wait()
	err = r.await(ctx, "watchers created", ws.created.get, int64(s.Streams+s.Watchers))
	elapsed := time.Since(start)
	profiled()
	n := ws.created.get() - int64(s.Streams)
	v["watchers"] = float64(n)
	v["create_s"] = elapsed.Seconds()
	v["creates_per_s"] = perSecond(n, elapsed)
	if herr == nil && len(d.procs()) > 0 {
		heap1, etcdHeap1, herr2 := heapTotal(ctx, d)
		if herr2 == nil && n > 0 {
			v["heap_per_watcher_b"] = (heap1 - heap0) / float64(n)
			v["etcd_heap_per_watcher_b"] = (etcdHeap1 - etcdHeap0) / float64(n)
		}
		rss1, _ := m.rss()
		if n > 0 {
			v["rss_per_watcher_b"] = (rss1 - rss0) / float64(n)
		}
	}
	putUsage(v, m.stop())
	if werr := ws.err(); werr != nil {
		return fmt.Errorf("%d watches failed, first: %w", ws.errs.get(), werr)
	}
	return err
}
