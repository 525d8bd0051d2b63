package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchChurn keeps a pool of watchers on a prefix while events flow, and replaces watchers at a
// steady rate: each tick creates a new watcher and cancels the oldest. It measures how long a
// create takes under that load and whether any watch fails.
type WatchChurn struct {
	Live     int           // watchers kept open
	Streams  int           // gRPC watch streams they are spread over
	Conns    int           // client connections the streams are spread over
	Churn    int           // watchers created (and as many canceled) per second
	Rate     int           // puts per second on the prefix
	Duration time.Duration // how long the churn runs
}

// DefaultWatchChurn is the default size: 1,000 live watchers, 200 replaced per second, 50 puts/s.
var DefaultWatchChurn = WatchChurn{Live: 1000, Streams: 100, Conns: 10, Churn: 200, Rate: 50, Duration: 10 * time.Second}

func (s WatchChurn) Name() string { return "watch-churn" }

func (s WatchChurn) title() string {
	return fmt.Sprintf("%d live watchers on a prefix (%d streams, %d connections), %d created and %d canceled per second, %d puts/s, for %s",
		s.Live, s.Streams, s.Conns, s.Churn, s.Churn, s.Rate, s.Duration)
}

func (s WatchChurn) params() map[string]any {
	return map[string]any{"live": s.Live, "streams": s.Streams, "conns": s.Conns, "churn": s.Churn,
		"rate": s.Rate, "duration_s": s.Duration.Seconds()}
}

func (s WatchChurn) validate() error {
	if s.Live < 1 || s.Streams < 1 || s.Conns < 1 || s.Churn < 1 || s.Rate < 1 || s.Duration <= 0 {
		return errors.New("watch-churn: live, streams, conns, churn, rate and duration must be positive")
	}
	return nil
}

func (s WatchChurn) columns() []Column {
	return append([]Column{
		{Key: "creates_per_s", Header: "creates/s", Digits: 0, Ratio: true},
		{Key: "create_p50_ms", Header: "create p50 ms", Digits: 2, Ratio: true},
		{Key: "create_p99_ms", Header: "create p99 ms", Digits: 2, Ratio: true},
		{Key: "errors", Header: "errors", Digits: 0},
		{Key: "events_per_s", Header: "events/s", Digits: 0, Ratio: true},
	}, usageColumns()...)
}

func (s WatchChurn) run(ctx context.Context, r *runner, d *deployment) []Row {
	return tieredRow(ctx, d, func(v map[string]float64) error { return s.measure(ctx, r, d, v) })
}

const churnPrefix = "bench/churn/"

func (s WatchChurn) measure(ctx context.Context, r *runner, d *deployment, v map[string]float64) error {
	ws, err := openWatchSet(ctx, d.endpoint, s.Conns, s.Streams)
	if err != nil {
		return err
	}
	wctx, cancelAll := context.WithCancel(ctx)
	defer ws.close()
	defer cancelAll()

	var events counter
	onEvents := func(resp clientv3.WatchResponse) { events.Add(int64(len(resp.Events))) }
	var mu sync.Mutex
	var live []context.CancelFunc // oldest first
	open := func(i int) {
		c, cancel := context.WithCancel(wctx)
		ws.watch(c, i, churnPrefix, nil, onEvents, clientv3.WithPrefix())
		mu.Lock()
		live = append(live, cancel)
		mu.Unlock()
	}
	for i := range s.Live {
		open(i)
	}
	if err := r.await(ctx, "watchers created", ws.created.get, int64(s.Live)); err != nil {
		return err
	}

	writers, err := dial(ctx, d.endpoint, 1)
	if err != nil {
		return err
	}
	defer closeAll(writers)
	m := startMeter(d)
	profiled := r.profile(ctx, d, "")
	createLat := newLatencies()
	var creates counter
	runCtx, stopRun := context.WithTimeout(wctx, s.Duration)
	defer stopRun()
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() {
		werr = paced(runCtx, s.Rate, func(seq int64) error { return putSeq(runCtx, writers[0], churnPrefix, seq, 100) })
	})
	var attempts counter
	wg.Go(func() {
		_ = paced(runCtx, s.Churn, func(seq int64) error {
			// The create latency is the time from the request to its created response.
			i := s.Live + int(seq)
			start := time.Now()
			c, cancel := context.WithCancel(wctx)
			attempts.Add(1)
			ws.watch(c, i, churnPrefix, func() {
				createLat.record(i, time.Since(start))
				creates.Add(1)
			}, onEvents, clientv3.WithPrefix())
			mu.Lock()
			live = append(live, cancel)
			oldest := live[0]
			live = live[1:]
			mu.Unlock()
			oldest()
			r.progressf("creates %d/%d, events %d", creates.get(), attempts.get(), events.get())
			return nil
		})
	})
	wg.Wait()
	err = r.await(ctx, "creates answered", creates.get, attempts.get())
	profiled()
	u := m.stop()
	v["creates"] = float64(creates.get())
	v["creates_per_s"] = perSecond(creates.get(), u.wall)
	v["events"] = float64(events.get())
	v["events_per_s"] = perSecond(events.get(), u.wall)
	v["errors"] = float64(ws.errs.get())
	createLat.quantilesMs(v, "create", false)
	putUsage(v, u)
	switch {
	case werr != nil:
		return werr
	case ws.err() != nil:
		return fmt.Errorf("%d watches failed, first: %w", ws.errs.get(), ws.err())
	}
	return err
}

// paced calls op(0), op(1), ... at rate per second until ctx ends or op fails. When op is slower
// than the rate, calls follow each other without pause (the schedule is not skipped).
func paced(ctx context.Context, rate int, op func(seq int64) error) error {
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for seq := int64(0); ; seq++ {
		if wait := time.Until(start.Add(time.Duration(seq) * interval)); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err := op(seq); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// putSeq writes a small stamped value to one of keys keys under prefix.
func putSeq(ctx context.Context, c *clientv3.Client, prefix string, seq int64, keys int) error {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	_, err := c.Put(octx, fmt.Sprintf("%s%08d", prefix, seq%int64(keys)), stamp{seq: uint64(seq)}.value(stampSize))
	return err
}
