package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchgate/watchgate/eventlog"
)

// Ingest measures how fast etcd's revisions reach the tier's consumer: at saturation (a backlog
// written before the tier starts, so the consumer starts far behind) and as lag under a steady
// write rate. For watchgate the consumer is the ingest worker and a revision counts when the
// event log has stored it (by the NATS server's timestamp). For direct etcd and the gRPC proxy
// the equivalent is one whole-keyspace watch, and a revision counts when the watch delivers it.
// All writes go straight to etcd.
type Ingest struct {
	Backlog   int           // revisions written before the tier starts
	Rate      int           // puts per second in the steady phase
	Duration  time.Duration // length of the steady phase
	ValueSize int
}

// DefaultIngest is the default size: a 20,000-revision backlog, then 1,000 puts/s for 10 s.
var DefaultIngest = Ingest{Backlog: 20000, Rate: 1000, Duration: 10 * time.Second, ValueSize: 256}

func (s Ingest) Name() string { return "ingest" }

func (s Ingest) title() string {
	return fmt.Sprintf("a backlog of %d revisions, then %d puts/s for %s; values of %d B", s.Backlog, s.Rate, s.Duration, s.ValueSize)
}

func (s Ingest) params() map[string]any {
	return map[string]any{"backlog": s.Backlog, "rate": s.Rate, "duration_s": s.Duration.Seconds(), "value_size": s.ValueSize}
}

func (s Ingest) validate() error {
	if s.Backlog < 2 || s.Rate < 1 || s.Duration <= 0 {
		return errors.New("ingest: backlog must be at least 2, rate and duration positive")
	}
	return nil
}

func (s Ingest) columns() []Column {
	return append([]Column{
		{Key: "backlog_rev_per_s", Header: "backlog rev/s", Digits: 0, Ratio: true},
		{Key: "lag_p50_ms", Header: "lag p50 ms", Digits: 2, Ratio: true},
		{Key: "lag_p99_ms", Header: "lag p99 ms", Digits: 2, Ratio: true},
		{Key: "puts_per_s", Header: "puts/s", Digits: 0},
	}, usageColumns()...)
}

const ingestPrefix = "bench/ingest/"

func (s Ingest) run(ctx context.Context, r *runner, d *deployment) []Row {
	row := Row{Target: d.name, Values: map[string]float64{}}
	finish(&row, s.measure(ctx, r, d, row.Values))
	return []Row{row}
}

func (s Ingest) measure(ctx context.Context, r *runner, d *deployment, v map[string]float64) error {
	writers, err := dial(ctx, d.etcdEndpoint(), 1)
	if err != nil {
		return err
	}
	defer closeAll(writers)
	clk := newClock()
	first, last, err := writeKeys(ctx, writers[0], ingestPrefix, s.Backlog, 1000, s.ValueSize, 64)
	if err != nil {
		return err
	}
	if err := d.startTier(ctx); err != nil {
		return err
	}

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var reached, tFirst, tLast atomic.Int64 // the consumer's last revision; backlog start and end (clock)
	lag := newLatencies()
	consume := func(rev int64, at time.Duration, events []*mvccpb.Event) {
		switch rev {
		case first:
			tFirst.CompareAndSwap(0, int64(at))
		case last:
			tLast.Store(int64(at))
		}
		if rev > last {
			for _, ev := range events {
				if st, ok := readStamp(ev.Kv.Value); ok && st.sent > 0 { // the backlog's values carry no send time
					lag.record(int(rev), at-st.sent)
				}
			}
		}
		reached.Store(rev)
	}
	errc := make(chan error, 1)
	// A watch delivers many revisions per response, so its backlog time starts when the watch is
	// requested; the event log's starts when it stores the first revision.
	started := func(at time.Duration) { tFirst.CompareAndSwap(0, int64(at)) }
	go func() { errc <- s.follow(cctx, d, clk, first, started, consume) }()
	if err := r.await(ctx, "backlog revisions", reached.Load, last); err != nil {
		return err
	}
	v["backlog_rev_per_s"] = perSecond(last-first+1, time.Duration(tLast.Load()-tFirst.Load()))

	m := startMeter(d)
	profiled := r.profile(ctx, d, "")
	runCtx, stop := context.WithTimeout(ctx, s.Duration)
	var acked, lastRev atomic.Int64
	werr := paced(runCtx, s.Rate, func(seq int64) error {
		octx, ocancel := context.WithTimeout(ctx, opTimeout)
		defer ocancel()
		st := stamp{seq: uint64(seq), sent: clk.now()}
		resp, err := writers[0].Put(octx, fmt.Sprintf("%s%08d", ingestPrefix, seq%1000), st.value(s.ValueSize))
		if err != nil {
			return err
		}
		acked.Add(1)
		lastRev.Store(resp.Header.Revision)
		r.progressf("steady puts %d, consumer at revision %d", acked.Load(), reached.Load())
		return nil
	})
	stop()
	if werr == nil {
		werr = r.await(ctx, "steady revisions", reached.Load, lastRev.Load())
	}
	profiled()
	u := m.stop()
	cancel()
	if ferr := <-errc; werr == nil && ferr != nil && !errors.Is(ferr, context.Canceled) {
		werr = ferr
	}
	v["puts_per_s"] = perSecond(acked.Load(), s.Duration)
	lag.quantilesMs(v, "lag", false)
	putUsage(v, u)
	return werr
}

// follow delivers every revision from the tier's consumer, in order, with the time it reached
// the consumer, until ctx ends.
func (s Ingest) follow(ctx context.Context, d *deployment, clk clock, from int64, started func(time.Duration), fn func(rev int64, at time.Duration, events []*mvccpb.Event)) error {
	if d.tier != nil && d.tier.ready.NATS != "" {
		return followLog(ctx, d.tier.ready.NATS, clk, from, fn)
	}
	cs, err := dial(ctx, d.endpoint, 1)
	if err != nil {
		return err
	}
	defer closeAll(cs)
	started(clk.now())
	wch := cs[0].Watch(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(from))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return err
		}
		at := clk.now()
		// A response can carry several revisions; each is delivered when the response is.
		for i := 0; i < len(resp.Events); {
			rev := resp.Events[i].Kv.ModRevision
			j := i
			for j < len(resp.Events) && resp.Events[j].Kv.ModRevision == rev {
				j++
			}
			fn(rev, at, resp.Events[i:j])
			i = j
		}
	}
	return ctx.Err()
}

// followLog reads the event log of the watchgate target from revision from. A revision's time
// is when the NATS server stored it.
func followLog(ctx context.Context, natsURL string, clk clock, from int64, fn func(rev int64, at time.Duration, events []*mvccpb.Event)) error {
	log, closeLog, err := bindLog(ctx, natsURL)
	if err != nil {
		return err
	}
	defer closeLog()
	cur, err := log.Follow(ctx, from, 0)
	if err != nil {
		return err
	}
	defer cur.Close()
	for {
		e, err := cur.Next(ctx)
		if err != nil {
			return err
		}
		if e.Err != nil {
			return fmt.Errorf("event log revision %d: %w", e.Rev, e.Err)
		}
		fn(e.Rev, e.Stored.Sub(clk.base), e.Events)
	}
}

// bindLog connects to the event log of the watchgate tier at natsURL; closeFn disconnects.
func bindLog(ctx context.Context, natsURL string) (log *eventlog.Log, closeFn func(), err error) {
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err == nil {
		log, err = eventlog.Bind(ctx, js, eventlog.Config{})
	}
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return log, nc.Close, nil
}
