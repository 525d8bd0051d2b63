package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// load is the traffic of a fault run: writers and watchers through the gateway fleet, each
// recording what happened and when, per phase of the run.
type load struct {
	phase atomic.Pointer[string] // the phase the run is in, set by the driver

	mu       sync.Mutex
	acked    map[int64]time.Time // guarded by mu: revision -> when its write was acknowledged
	phaseOf  map[int64]string    // guarded by mu: revision -> phase it was written in
	writes   map[string]*writeStats
	watchers []*recorder
	clients  []*clientv3.Client // of the gateway fleet, shared by writers and watchers

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// writeStats counts one phase's writes.
type writeStats struct {
	ok, failed int
	errors     map[string]int
	lastOK     time.Time
	longestGap time.Duration // longest time between two successful writes of one writer, roughly
}

// recorder is one watcher.
type recorder struct {
	spec Watch

	mu        sync.Mutex
	responses []Response
	received  map[int64]time.Time // revision -> when it arrived
	progress  int64               // highest header revision seen
}

func (l *load) setPhase(name string) { l.phase.Store(&name) }

func (l *load) phaseName() string { return *l.phase.Load() }

// startLoad starts writers writers and the given watchers, on clients of the gateway fleet.
func startLoad(ctx context.Context, w *world, writers int, specs []Watch) *load {
	l := &load{acked: map[int64]time.Time{}, phaseOf: map[int64]string{}, writes: map[string]*writeStats{}}
	l.setPhase("start")
	ctx, l.stop = context.WithCancel(ctx)
	for range 3 {
		l.clients = append(l.clients, w.gatewayClient())
	}
	clients := l.clients
	for i, spec := range specs {
		r := &recorder{spec: spec, received: map[int64]time.Time{}}
		l.watchers = append(l.watchers, r)
		c := clients[i%len(clients)]
		opts := []clientv3.OpOption{clientv3.WithRev(spec.Start), clientv3.WithCreatedNotify()}
		switch spec.End {
		case "":
		case "\x00":
			opts = append(opts, clientv3.WithFromKey())
		default:
			opts = append(opts, clientv3.WithRange(spec.End))
		}
		if spec.PrevKV {
			opts = append(opts, clientv3.WithPrevKV())
		}
		wch := c.Watch(ctx, spec.Key, opts...)
		created := <-wch
		if !created.Created {
			w.t.Fatalf("watch %s not created: %v", spec.Name, created.Err())
		}
		if spec.Start == 0 {
			r.spec.Start = created.Header.Revision + 1
		}
		l.wg.Go(func() { r.run(wch) })
	}
	for n := range writers {
		c := clients[n%len(clients)]
		l.wg.Go(func() { l.write(ctx, c, n) })
	}
	return l
}

// run records every response of one watch until it ends.
func (r *recorder) run(wch clientv3.WatchChan) {
	for resp := range wch {
		now := time.Now()
		r.mu.Lock()
		r.progress = max(r.progress, resp.Header.Revision)
		if len(resp.Events) > 0 || resp.Canceled || resp.CompactRevision != 0 {
			r.responses = append(r.responses, Response{Events: resp.Events, Canceled: resp.Canceled,
				CompactRevision: resp.CompactRevision, Err: resp.Err()})
			for _, ev := range resp.Events {
				if _, ok := r.received[ev.Kv.ModRevision]; !ok {
					r.received[ev.Kv.ModRevision] = now
				}
			}
		}
		r.mu.Unlock()
	}
}

// write writes until ctx ends: mostly puts, some two-key txns and deletes, on its own keys.
func (l *load) write(ctx context.Context, c *clientv3.Client, n int) {
	rng := rand.New(rand.NewPCG(uint64(n), 1))
	pace := time.NewTicker(5 * time.Millisecond) // a steady load, not timing logic
	defer pace.Stop()
	var lastOK time.Time
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-pace.C:
		}
		k := fmt.Sprintf("k/%d/%02d", n, rng.IntN(40))
		var rev int64
		var err error
		switch x := rng.IntN(10); {
		case x < 7:
			var r *clientv3.PutResponse
			if r, err = c.Put(ctx, k, fmt.Sprint(i)); err == nil {
				rev = r.Header.Revision
			}
		case x < 9:
			var r *clientv3.TxnResponse
			k2 := fmt.Sprintf("k/%d/%02d", n, rng.IntN(40))
			if r, err = c.Txn(ctx).Then(clientv3.OpPut(k, fmt.Sprint(i)), clientv3.OpPut(k2+"t", fmt.Sprint(i))).Commit(); err == nil {
				rev = r.Header.Revision
			}
		default:
			var r *clientv3.DeleteResponse
			if r, err = c.Delete(ctx, k); err == nil {
				rev = r.Header.Revision
			}
		}
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		ph := l.phaseName()
		l.mu.Lock()
		st := l.writes[ph]
		if st == nil {
			st = &writeStats{errors: map[string]int{}}
			l.writes[ph] = st
		}
		if err != nil {
			st.failed++
			st.errors[err.Error()]++
		} else {
			st.ok++
			if !lastOK.IsZero() {
				st.longestGap = max(st.longestGap, now.Sub(lastOK))
			}
			lastOK = now
			if _, dup := l.acked[rev]; !dup {
				l.acked[rev] = now
				l.phaseOf[rev] = ph
			}
		}
		l.mu.Unlock()
	}
}

// phaseReport is what one phase looked like to clients.
type phaseReport struct {
	Phase                   string
	WritesOK, WritesFailed  int
	LongestWriteGap         time.Duration
	MaxDelivery, P50Deliver time.Duration // from a write's acknowledgement to its arrival at a watcher
	Errors                  map[string]int
}

// report summarises each phase, in order of first appearance.
func (l *load) report(order []string) []phaseReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	delays := map[string][]time.Duration{}
	for _, r := range l.watchers {
		r.mu.Lock()
		for rev, at := range r.received {
			if ack, ok := l.acked[rev]; ok {
				delays[l.phaseOf[rev]] = append(delays[l.phaseOf[rev]], max(0, at.Sub(ack)))
			}
		}
		r.mu.Unlock()
	}
	var out []phaseReport
	for _, ph := range order {
		st := l.writes[ph]
		if st == nil {
			st = &writeStats{}
		}
		d := delays[ph]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		pr := phaseReport{Phase: ph, WritesOK: st.ok, WritesFailed: st.failed, LongestWriteGap: st.longestGap, Errors: st.errors}
		if len(d) > 0 {
			pr.MaxDelivery, pr.P50Deliver = d[len(d)-1], d[len(d)/2]
		}
		out = append(out, pr)
	}
	return out
}
