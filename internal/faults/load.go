package faults

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Load is the traffic of a fault run: writers and watchers through gateway replicas, recording
// what happened and when, in phases the run names as it goes (a fault, an outage, recovery).
// Its Watchers' recordings are what the checker compares with etcd's history; Report is what
// clients saw in each phase.
type Load struct {
	mu       sync.Mutex
	phases   []*loadPhase     // guarded by mu; the last one is current
	commits  map[int64]commit // guarded by mu: each acknowledged revision
	watchers []*Watcher       // guarded by mu

	writing, watching sync.WaitGroup
}

// loadPhase is one phase of a run and what writers saw in it.
type loadPhase struct {
	name       string
	start, end time.Time
	ok, failed int
	errs       map[string]int
	longestGap time.Duration // longest time between two successful writes of one writer
}

// commit is when a write was acknowledged, and in which phase.
type commit struct {
	at    time.Time
	phase int
}

// Watcher records every response of one watch.
type Watcher struct {
	spec Watch

	mu         sync.Mutex
	responses  []Response          // guarded by mu
	received   map[int64]time.Time // guarded by mu: revision -> when it first arrived
	deliveries []time.Time         // guarded by mu: when each response with events arrived
	progress   int64               // guarded by mu: highest header revision seen
	closed     bool                // guarded by mu: the watch channel closed
}

// NewLoad returns a Load in a first phase named name.
func NewLoad(name string) *Load {
	l := &Load{commits: map[int64]commit{}}
	l.Begin(name)
	return l
}

// Begin starts phase name, ending the current one.
func (l *Load) Begin(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if n := len(l.phases); n > 0 {
		l.phases[n-1].end = now
	}
	l.phases = append(l.phases, &loadPhase{name: name, start: now, errs: map[string]int{}})
}

// End ends the current phase.
func (l *Load) End() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.phases[len(l.phases)-1].end = time.Now()
}

// WritesInPhase is how many writes have succeeded in the current phase.
func (l *Load) WritesInPhase() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.phases[len(l.phases)-1].ok
}

// Watch opens spec's watch on c and records it until ctx ends or the watch does. A spec
// without a start revision starts after the revision its creation reports.
func (l *Load) Watch(ctx context.Context, c *clientv3.Client, spec Watch) (*Watcher, error) {
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
		return nil, fmt.Errorf("watch %s not created: %v", spec.Name, created.Err())
	}
	if spec.Start == 0 {
		spec.Start = created.Header.Revision + 1
	}
	w := &Watcher{spec: spec, received: map[int64]time.Time{}}
	l.mu.Lock()
	l.watchers = append(l.watchers, w)
	l.mu.Unlock()
	l.watching.Go(func() {
		for resp := range wch {
			w.record(resp, time.Now())
		}
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
	})
	return w, nil
}

func (w *Watcher) record(resp clientv3.WatchResponse, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.progress = max(w.progress, resp.Header.Revision)
	if len(resp.Events) == 0 && !resp.Canceled && resp.CompactRevision == 0 {
		return // a progress notification
	}
	w.responses = append(w.responses, Response{Events: resp.Events, Canceled: resp.Canceled,
		CompactRevision: resp.CompactRevision, Err: resp.Err()})
	if len(resp.Events) > 0 {
		w.deliveries = append(w.deliveries, now)
	}
	for _, ev := range resp.Events {
		if _, ok := w.received[ev.Kv.ModRevision]; !ok {
			w.received[ev.Kv.ModRevision] = now
		}
	}
}

// Ended returns the response with which the server ended the watch, if it did.
func (w *Watcher) Ended() (Response, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.responses {
		if r.Canceled || r.CompactRevision != 0 || r.Err != nil {
			return r, true
		}
	}
	return Response{}, false
}

// Recorded is the watch's spec with every response it received.
func (w *Watcher) Recorded() Watch {
	w.mu.Lock()
	defer w.mu.Unlock()
	spec := w.spec
	spec.Responses = slices.Clone(w.responses)
	return spec
}

// Watchers are the load's watchers, in the order they were opened.
func (l *Load) Watchers() []*Watcher {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.watchers)
}

// Progress is the lowest revision that every watcher still open has heard of, in events or
// progress notifications (math.MaxInt64 if none is open). A closed watch is left out: the
// checker reports it.
func (l *Load) Progress() int64 {
	low := int64(math.MaxInt64)
	for _, w := range l.Watchers() {
		w.mu.Lock()
		if !w.closed {
			low = min(low, w.progress)
		}
		w.mu.Unlock()
	}
	return low
}

// WaitWatchers waits until every watch has closed (their context ended).
func (l *Load) WaitWatchers() { l.watching.Wait() }

// Write starts writer n: until ctx ends it writes through c every pace, mostly puts, some
// two-key txns and deletes, on keys of its own, k/<n>/NN.
func (l *Load) Write(ctx context.Context, c *clientv3.Client, n int, pace time.Duration) {
	l.writing.Go(func() { l.write(ctx, c, n, pace) })
}

// WaitWriters waits until every writer has stopped (their context ended) and its last request
// has been answered.
func (l *Load) WaitWriters() { l.writing.Wait() }

// writeTimeout bounds one write. A write is never canceled by the writer's stop: a canceled
// request may still reach etcd and commit after the caller gave up on it, after the revision
// a test reads as the last one.
const writeTimeout = 20 * time.Second

func (l *Load) write(stop context.Context, c *clientv3.Client, n int, pace time.Duration) {
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	tick := time.NewTicker(pace) // a steady load, not timing logic
	defer tick.Stop()
	var lastOK time.Time
	for i := 0; ; i++ {
		select {
		case <-stop.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(stop), writeTimeout)
		key := func() string { return fmt.Sprintf("k/%d/%02d", n, rng.IntN(40)) }
		k := key()
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
			if r, err = c.Txn(ctx).Then(clientv3.OpPut(k, fmt.Sprint(i)), clientv3.OpPut(key()+"t", fmt.Sprint(i))).Commit(); err == nil {
				rev = r.Header.Revision
			}
		default:
			var r *clientv3.DeleteResponse
			if r, err = c.Delete(ctx, k); err == nil {
				rev = r.Header.Revision
			}
		}
		cancel()
		now := time.Now()
		l.mu.Lock()
		ph := l.phases[len(l.phases)-1]
		if err != nil {
			ph.failed++
			ph.errs[err.Error()]++
		} else {
			ph.ok++
			if !lastOK.IsZero() {
				ph.longestGap = max(ph.longestGap, now.Sub(lastOK))
			}
			lastOK = now
			if _, dup := l.commits[rev]; !dup {
				l.commits[rev] = commit{at: now, phase: len(l.phases) - 1}
			}
		}
		l.mu.Unlock()
	}
}

// Report describes each phase: its writes, how long its revisions took from their write's
// acknowledgement to each watcher that received them, and the longest time in it that a
// whole-keyspace watcher open from the first phase received nothing.
func (l *Load) Report() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	delays := make([][]time.Duration, len(l.phases))
	pauses := make([]time.Duration, len(l.phases))
	for _, w := range l.watchers {
		w.mu.Lock()
		for rev, at := range w.received {
			if c, ok := l.commits[rev]; ok {
				delays[c.phase] = append(delays[c.phase], max(0, at.Sub(c.at)))
			}
		}
		if w.spec.Key == "\x00" && w.spec.End == "\x00" && len(w.deliveries) > 0 && !w.deliveries[0].After(l.phases[0].end) {
			for i, ph := range l.phases {
				pauses[i] = max(pauses[i], longestPause(w.deliveries, ph.start, ph.end))
			}
		}
		w.mu.Unlock()
	}
	var out []string
	for i, ph := range l.phases {
		d := delays[i]
		slices.Sort(d)
		var p50, worst time.Duration
		if len(d) > 0 {
			p50, worst = d[len(d)/2], d[len(d)-1]
		}
		avail := 100.0
		if n := ph.ok + ph.failed; n > 0 {
			avail = 100 * float64(ph.ok) / float64(n)
		}
		out = append(out, fmt.Sprintf("%-20s %5.1fs: writes %d ok, %d failed (%.1f%%), longest write gap %v; "+
			"write to watcher p50 %v max %v; longest pause of a whole-keyspace watcher %v; errors %v",
			ph.name, ph.end.Sub(ph.start).Seconds(), ph.ok, ph.failed, avail, ph.longestGap.Round(time.Millisecond),
			p50.Round(time.Millisecond), worst.Round(time.Millisecond), pauses[i].Round(time.Millisecond), ph.errs))
	}
	return out
}

// longestPause is the longest stretch of [start, end] without a delivery.
func longestPause(deliveries []time.Time, start, end time.Time) time.Duration {
	var longest time.Duration
	prev := start
	for _, at := range deliveries {
		if at.Before(start) {
			continue
		}
		if at.After(end) {
			break
		}
		longest = max(longest, at.Sub(prev))
		prev = at
	}
	return max(longest, end.Sub(prev))
}
