package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/watchgate/watchgate/cache"
	"github.com/watchgate/watchgate/eventlog"
)

// revision is one log revision as the hub holds it. It is immutable once built, so watchers
// and send loops share it without copying.
type revision struct {
	rev    int64
	events []*mvccpb.Event // as logged, with prev_kv

	noPrevOnce sync.Once
	noPrev     []*mvccpb.Event // events without prev_kv, built on first use
}

func newRevision(r eventlog.Revision) *revision {
	return &revision{rev: r.Rev, events: r.Events}
}

// withoutPrevKV returns the revision's events with prev_kv stripped, computed once.
func (r *revision) withoutPrevKV() []*mvccpb.Event {
	r.noPrevOnce.Do(func() {
		r.noPrev = make([]*mvccpb.Event, len(r.events))
		for i, ev := range r.events {
			if ev.PrevKv == nil {
				r.noPrev[i] = ev
				continue
			}
			r.noPrev[i] = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
		}
	})
	return r.noPrev
}

// hub is the replica's single consumer of the event log (the s-watcher). It applies each
// revision to the history ring and hands it to every synced watcher; watchers that start in the
// past, or fall behind, catch up on their own goroutine (catchUp) and then join the synced set.
//
// # Concurrency properties
//
// One goroutine (run) applies revisions. mu guards the hub's state and orders every change of
// a watcher between synced and catching up against the application of revisions, so a watcher
// is fed by exactly one party at a time and never sees a revision twice or misses one.
// Delivery to a synced watcher never blocks: a watcher whose stream is full leaves the synced
// set and catches up later, so one slow client cannot stall the hub or anyone else.
type hub struct {
	log    *eventlog.Log
	logger *slog.Logger
	m      *metrics
	header func(rev int64) *pb.ResponseHeader
	retry  time.Duration

	started chan struct{} // closed once the hub knows the log's bounds

	mu sync.Mutex
	// Guarded by mu.
	applied  int64 // last revision applied; every synced watcher has been handed all <= applied
	compact  int64 // revisions <= compact are gone: watchers needing them are compacted
	readyAt  int64 // the log's last revision at startup; ready once applied reaches it
	ready    bool
	ring     *cache.History[*revision]
	synced   map[*watcher]struct{}
	watchers int // every registered watcher, synced or catching up
}

func newHub(o Options, m *metrics, header func(int64) *pb.ResponseHeader) *hub {
	return &hub{
		logger:  o.Logger,
		m:       m,
		header:  header,
		retry:   o.RetryDelay,
		started: make(chan struct{}),
		ring:    cache.NewHistory[*revision](o.HistoryRevisions, o.HistoryBytes),
		synced:  make(map[*watcher]struct{}),
	}
}

// run consumes the log until ctx ends, resuming after errors.
func (h *hub) run(ctx context.Context, log *eventlog.Log) error {
	h.log = log
	for {
		err := h.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		h.logger.Error("event log consumer interrupted; resuming", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(h.retry):
		}
	}
}

func (h *hub) follow(ctx context.Context) error {
	b, err := h.log.Bounds(ctx)
	if err != nil {
		return err
	}
	h.mu.Lock()
	select {
	case <-h.started:
	default:
		// Start far enough back to fill the history ring.
		h.applied = max(b.First, b.Last-int64(h.ring.Cap())+1) - 1
		h.compact = b.Compact()
		h.readyAt = b.Last
		h.ready = h.applied >= h.readyAt
		close(h.started)
	}
	from := h.applied + 1
	h.mu.Unlock()

	cur, err := h.log.Follow(ctx, from, 0)
	if err != nil {
		return err
	}
	defer cur.Close()
	for {
		e, err := cur.Next(ctx)
		if err != nil {
			return err
		}
		h.apply(e)
	}
}

// apply applies one log entry and dispatches it to the synced watchers.
func (h *hub) apply(e eventlog.Entry) {
	h.m.lag.Store(int64(e.Pending))
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case e.Err != nil:
		h.m.corrupt.Add(context.Background(), 1)
		h.logger.Error("rejected an event log message; its revision is treated as compacted",
			"revision", e.Rev, "err", e.Err)
		h.compactLocked(e.Rev)
		h.applied = e.Rev
		return
	case e.Missing != 0:
		h.logger.Warn("the event log no longer holds some revisions; watchers needing them are compacted",
			"from", e.Missing, "to", e.Rev-1)
		h.compactLocked(e.Rev - 1)
	}
	r := newRevision(e.Revision)
	if err := h.ring.Append(r.rev, r, int64(e.Size)); err != nil {
		h.ring.Reset()
		_ = h.ring.Append(r.rev, r, int64(e.Size)) // cannot fail on an empty ring
	}
	h.applied = r.rev
	h.m.revisions.Add(context.Background(), 1)
	if !h.ready && h.applied >= h.readyAt {
		h.ready = true
	}
	for w := range h.synced {
		if w.start > r.rev {
			continue
		}
		resp := w.response(r, h.header)
		if resp == nil {
			continue
		}
		if !w.stream.trySend(w, resp) {
			// The stream is full: this watcher catches up from history when it drains.
			delete(h.synced, w)
			w.next = r.rev
			h.m.lagging.Add(context.Background(), 1)
			go h.catchUp(w)
		}
	}
}

// compactLocked records that revisions <= rev are gone and cancels the synced watchers that
// still needed some of them.
func (h *hub) compactLocked(rev int64) {
	h.compact = max(h.compact, rev)
	h.ring.Reset()
	for w := range h.synced {
		if w.start <= rev {
			h.removeLocked(w)
			go w.stream.sendCompacted(w, h.compact) // never block the hub on a stream
		}
	}
}

// Errors from registering a watcher.
var errCompacted = errors.New("gateway: start revision compacted")

// add registers w to start at revision start (> 0). It returns errCompacted, with the compact
// revision, if the deployment no longer holds that history.
func (h *hub) add(w *watcher, start int64) (int64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if start < h.compact {
		return h.compact, errCompacted
	}
	h.watchers++
	next := max(start, h.compact+1)
	if next > h.applied {
		w.start = next
		h.synced[w] = struct{}{}
		return 0, nil
	}
	w.next = next
	go h.catchUp(w)
	return 0, nil
}

// remove unregisters w; nothing is sent for it afterwards.
func (h *hub) remove(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.removeLocked(w)
}

func (h *hub) removeLocked(w *watcher) {
	if w.cancel() {
		delete(h.synced, w)
		h.watchers--
	}
}

// status reports the last applied revision and whether the replica has caught up with the log.
func (h *hub) status() (applied int64, ready bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.applied, h.ready
}

// catchUpBatch is how many revisions a catching-up watcher takes from history per lock.
const catchUpBatch = 64

// catchUp feeds w from history, then from the log, until it reaches the hub's applied revision,
// and then moves it into the synced set. It runs on its own goroutine and may block on w's
// stream without affecting anyone else.
func (h *hub) catchUp(w *watcher) {
	var batch []*revision
	for {
		h.mu.Lock()
		switch {
		case w.canceled():
			h.mu.Unlock()
			return
		case w.next <= h.compact:
			h.removeLocked(w)
			h.mu.Unlock()
			w.stream.sendCompacted(w, h.compact)
			return
		case w.next > h.applied:
			w.start = w.next
			h.synced[w] = struct{}{}
			h.mu.Unlock()
			return
		}
		batch = h.ring.From(batch[:0], w.next, catchUpBatch)
		to := h.applied
		if len(batch) == 0 && h.ring.Len() > 0 {
			to = h.ring.Oldest() - 1
		}
		h.mu.Unlock()

		if len(batch) > 0 {
			for _, r := range batch {
				if !w.deliver(r, h.header) {
					return
				}
				w.next = r.rev + 1
			}
			continue
		}
		if err := h.replay(w, to); err != nil {
			if !w.canceled() && w.ctx.Err() == nil {
				h.logger.Warn("watcher could not replay from the event log", "watch_id", w.id, "err", err)
				h.remove(w)
				w.stream.sendCanceled(w, err.Error())
			}
			return
		}
	}
}

// replay feeds w revisions [w.next, to] from the event log.
func (h *hub) replay(w *watcher, to int64) error {
	cur, err := h.log.Follow(w.ctx, w.next, 0)
	if err != nil {
		return err
	}
	defer cur.Close()
	for w.next <= to {
		e, err := cur.Next(w.ctx)
		if err != nil {
			return err
		}
		if e.Missing != 0 || e.Err != nil {
			// The log lost (or cannot give) what w needs: record it so the loop compacts w.
			lost := e.Rev - 1
			if e.Err != nil {
				lost = e.Rev
			}
			h.mu.Lock()
			h.compact = max(h.compact, lost)
			h.mu.Unlock()
			return nil
		}
		if !w.deliver(newRevision(e.Revision), h.header) {
			return fmt.Errorf("gateway: watcher %d closed", w.id)
		}
		w.next = e.Rev + 1
	}
	return nil
}
