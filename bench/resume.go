package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchResume is what follows a replica restart: a fleet of watchers reconnects at once, each
// resuming from the same old revision, and must replay the history since then before it is
// caught up.
type WatchResume struct {
	Watchers  int
	Streams   int
	Conns     int
	History   int // revisions written before the watchers resume from the first of them
	Keys      int // keys of the watched prefix the history is spread over
	ValueSize int
}

// DefaultWatchResume is the default size: 1,000 watchers replaying 1,000 revisions.
var DefaultWatchResume = WatchResume{Watchers: 1000, Streams: 100, Conns: 10, History: 1000, Keys: 100, ValueSize: 256}

func (s WatchResume) Name() string { return "watch-resume" }

func (s WatchResume) title() string {
	return fmt.Sprintf("%d watchers (%d streams, %d connections) resume at once %d revisions back on a prefix of %d keys, values of %d B",
		s.Watchers, s.Streams, s.Conns, s.History, s.Keys, s.ValueSize)
}

func (s WatchResume) params() map[string]any {
	return map[string]any{"watchers": s.Watchers, "streams": s.Streams, "conns": s.Conns, "history": s.History,
		"keys": s.Keys, "value_size": s.ValueSize}
}

func (s WatchResume) validate() error {
	if s.Watchers < 1 || s.Streams < 1 || s.Conns < 1 || s.History < 1 || s.Keys < 1 {
		return errors.New("watch-resume: watchers, streams, conns, history and keys must be positive")
	}
	return nil
}

func (s WatchResume) columns() []Column {
	return append([]Column{
		{Key: "catch_up_s", Header: "catch-up s", Digits: 2, Ratio: true},
		{Key: "events_per_s", Header: "events/s", Digits: 0, Ratio: true},
	}, usageColumns()...)
}

func (s WatchResume) run(ctx context.Context, r *runner, d *deployment) []Row {
	return tieredRow(ctx, d, func(v map[string]float64) error { return s.measure(ctx, r, d, v) })
}

const resumePrefix = "bench/resume/"

func (s WatchResume) measure(ctx context.Context, r *runner, d *deployment, v map[string]float64) error {
	writers, err := dial(ctx, d.endpoint, 1)
	if err != nil {
		return err
	}
	defer closeAll(writers)
	// The history goes through the target, as a client's writes would.
	first, last, err := writeKeys(ctx, writers[0], resumePrefix, s.History, s.Keys, s.ValueSize, 16)
	if err != nil {
		return err
	}
	ws, err := openWatchSet(ctx, d.endpoint, s.Conns, s.Streams)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer ws.close()
	defer cancel()

	m := startMeter(d)
	profiled := r.profile(ctx, d, "")
	start := time.Now()
	var events, caughtUp counter
	for i := range s.Watchers {
		done := false
		ws.watch(wctx, i, resumePrefix, nil, func(resp clientv3.WatchResponse) {
			events.Add(int64(len(resp.Events)))
			if n := len(resp.Events); !done && n > 0 && resp.Events[n-1].Kv.ModRevision >= last {
				done = true
				caughtUp.Add(1)
			}
		}, clientv3.WithPrefix(), clientv3.WithRev(first))
	}
	err = r.await(ctx, "watchers caught up", caughtUp.get, int64(s.Watchers))
	elapsed := time.Since(start)
	profiled()
	u := m.stop()
	v["caught_up"] = float64(caughtUp.get())
	v["events"] = float64(events.get())
	v["catch_up_s"] = elapsed.Seconds()
	v["events_per_s"] = perSecond(events.get(), elapsed)
	putUsage(v, u)
	if werr := ws.err(); werr != nil {
		return fmt.Errorf("%d watches failed, first: %w", ws.errs.get(), werr)
	}
	return err
}
