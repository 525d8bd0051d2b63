package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchFanout is many watchers on one key (or one prefix) while a writer puts at a steady rate:
// the load of a controller fleet watching the same resource.
type WatchFanout struct {
	Watchers  int           // watchers in all
	Streams   int           // gRPC watch streams they are spread over
	Conns     int           // client connections the streams are spread over
	Keys      int           // 1: every put and watch is on one key; more: puts cycle over this many keys of a prefix the watchers watch
	Rate      int           // puts per second
	ValueSize int           // bytes per value (at least 16: the put's sequence number and send time)
	Duration  time.Duration // how long the writer runs
}

// DefaultWatchFanout is the default size: 1,000 watchers on one key, 100 puts/s for 10 s.
var DefaultWatchFanout = WatchFanout{Watchers: 1000, Streams: 100, Conns: 10, Keys: 1, Rate: 100, ValueSize: 256, Duration: 10 * time.Second}

func (s WatchFanout) Name() string { return "watch-fanout" }

func (s WatchFanout) title() string {
	on := "one key"
	if s.Keys > 1 {
		on = fmt.Sprintf("a prefix of %d keys", s.Keys)
	}
	return fmt.Sprintf("%d watchers (%d streams, %d connections) on %s; %d puts/s of %d B for %s",
		s.Watchers, s.Streams, s.Conns, on, s.Rate, s.ValueSize, s.Duration)
}

func (s WatchFanout) params() map[string]any {
	return map[string]any{"watchers": s.Watchers, "streams": s.Streams, "conns": s.Conns, "keys": s.Keys,
		"rate": s.Rate, "value_size": s.ValueSize, "duration_s": s.Duration.Seconds()}
}

func (s WatchFanout) validate() error {
	if s.Watchers < 1 || s.Streams < 1 || s.Conns < 1 || s.Keys < 1 || s.Rate < 1 || s.Duration <= 0 {
		return errors.New("watch-fanout: watchers, streams, conns, keys, rate and duration must be positive")
	}
	return nil
}

func (s WatchFanout) columns() []Column {
	return append([]Column{
		{Key: "events_per_s", Header: "events/s", Digits: 0, Ratio: true},
		{Key: "latency_p50_ms", Header: "p50 ms", Digits: 2, Ratio: true},
		{Key: "latency_p99_ms", Header: "p99 ms", Digits: 2, Ratio: true},
		{Key: "latency_p999_ms", Header: "p99.9 ms", Digits: 2, Ratio: true},
		{Key: "lost", Header: "lost", Digits: 0},
		{Key: "out_of_order", Header: "dup/reordered", Digits: 0},
		{Key: "puts_per_s", Header: "puts/s", Digits: 0},
	}, usageColumns()...)
}

func (s WatchFanout) run(ctx context.Context, r *runner, d *deployment) []Row {
	return tieredRow(ctx, d, func(v map[string]float64) error { return s.measure(ctx, r, d, v) })
}

func (s WatchFanout) measure(ctx context.Context, r *runner, d *deployment, v map[string]float64) error {
	writers, err := dial(ctx, d.endpoint, 1)
	if err != nil {
		return err
	}
	writer := writers[0]
	defer writer.Close()
	ws, err := openWatchSet(ctx, d.endpoint, s.Conns, s.Streams)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer ws.close()
	defer cancel()

	key, opts := "bench/fanout", []clientv3.OpOption(nil)
	if s.Keys > 1 {
		key, opts = "bench/fanout/", []clientv3.OpOption{clientv3.WithPrefix()}
	}
	rev, err := currentRevision(ctx, writer)
	if err != nil {
		return err
	}
	opts = append(opts, clientv3.WithRev(rev+1))

	clk := newClock()
	lat := newLatencies()
	var delivered, outOfOrder counter
	var lastDelivery atomic.Int64
	for i := range s.Watchers {
		var next uint64 // the sequence number this watcher expects next
		buf := make([]time.Duration, 0, 16)
		ws.watch(wctx, i, key, nil, func(resp clientv3.WatchResponse) {
			now := clk.now()
			buf = buf[:0]
			for _, ev := range resp.Events {
				st, ok := readStamp(ev.Kv.Value)
				if !ok {
					continue
				}
				if st.seq < next {
					outOfOrder.Add(1)
					continue
				}
				next = st.seq + 1 // a gap shows as events lost at the end
				buf = append(buf, now-st.sent)
			}
			lat.record(i, buf...)
			delivered.Add(int64(len(buf)))
			lastDelivery.Store(int64(now))
		}, opts...)
	}
	if err := r.await(ctx, "watchers created", ws.created.get, int64(s.Watchers)); err != nil {
		return err
	}

	m := startMeter(d)
	profiled := r.profile(ctx, d, "")
	total := max(1, int64(float64(s.Rate)*s.Duration.Seconds()))
	interval := time.Second / time.Duration(s.Rate)
	start := clk.now()
	var acked int64
	putLat := newLatencies()
	var werr error
	for seq := range total {
		if wait := start + time.Duration(seq)*interval - clk.now(); wait > 0 {
			time.Sleep(wait) // pacing the writer to its rate
		}
		st := stamp{seq: uint64(seq), sent: clk.now()}
		k := key
		if s.Keys > 1 {
			k = fmt.Sprintf("%s%08d", key, seq%int64(s.Keys))
		}
		octx, ocancel := context.WithTimeout(ctx, opTimeout)
		_, err := writer.Put(octx, k, st.value(s.ValueSize))
		ocancel()
		if err != nil {
			werr = fmt.Errorf("put %d: %w", seq, err)
			break
		}
		putLat.record(0, clk.now()-st.sent)
		acked++
		r.progressf("puts %d/%d, events %d/%d", acked, total, delivered.get(), acked*int64(s.Watchers))
	}
	writeTime := clk.now() - start
	want := acked * int64(s.Watchers)
	err = r.await(ctx, "events", delivered.get, want)
	profiled()
	u := m.stop()

	got := delivered.get()
	v["events"] = float64(got)
	v["events_per_s"] = perSecond(got, time.Duration(lastDelivery.Load())-start)
	v["lost"] = float64(max(0, want-got))
	v["out_of_order"] = float64(outOfOrder.get())
	v["puts_per_s"] = perSecond(acked, writeTime)
	v["watch_errors"] = float64(ws.errs.get())
	lat.quantilesMs(v, "latency", true)
	putLat.quantilesMs(v, "put", false)
	putUsage(v, u)
	switch {
	case werr != nil:
		return werr
	case ws.err() != nil:
		return fmt.Errorf("%d watches failed, first: %w", ws.errs.get(), ws.err())
	}
	return err
}
