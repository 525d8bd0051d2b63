package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/watchgate/watchgate/cache"
	"github.com/watchgate/watchgate/eventlog"
)

// revision is one log revision as the hub holds it. It is immutable once built, so watchers
// and send loops share it without copying.
type revision struct {
	rev    int64
	events []*mvccpb.Event // as logged, with prev_kv
	wire   [][]byte        // each event's WatchResponse field, with prev_kv (eventlog.Revision.Wire)

	noPrevOnce sync.Once
	noPrev     [][]byte // each event's field without prev_kv, encoded on first use
}

func newRevision(r eventlog.Revision) *revision {
	return &revision{rev: r.Rev, events: r.Events, wire: r.Wire}
}

// wireWithoutPrevKV returns each event's WatchResponse field with prev_kv left out, encoded
// once. An event without prev_kv shares the logged bytes.
func (r *revision) wireWithoutPrevKV() [][]byte {
	r.noPrevOnce.Do(func() {
		r.noPrev = make([][]byte, len(r.events))
		for i, ev := range r.events {
			if ev.PrevKv == nil {
				r.noPrev[i] = r.wire[i]
				continue
			}
			b, err := proto.Marshal(&mvccpb.Event{Type: ev.Type, Kv: ev.Kv})
			if err != nil {
				panic(fmt.Sprintf("gateway: re-encoding a decoded event: %v", err)) // cannot fail
			}
			f := protowire.AppendTag(nil, eventsFieldNumber, protowire.BytesType)
			f = protowire.AppendBytes(f, b)
			r.noPrev[i] = f[:len(f):len(f)] // shared: an append must copy, never write in place
		}
	})
	return r.noPrev
}

// eventsFieldNumber is the field number of events in etcd's WatchResponse.
const eventsFieldNumber protowire.Number = 11

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
	synced   *index
	watchers int // every registered watcher, synced or catching up

	// The keyspace cache: nil while it is (re)built or disabled. Stored under mu.
	keys      atomic.Pointer[cache.Keyspace]
	responses *cache.Responses // nil if disabled
	rebuild   chan struct{}    // asks keepKeyspace for a new keyspace
	loaded    atomic.Bool      // a keyspace has been installed once
	// Guarded by mu.
	waiters  waiterHeap // reads waiting for the keyspace to reach a revision
	noPrevKV int64      // the last revision with an event that cannot be rolled back
}

func newHub(o Options, m *metrics, header func(int64) *pb.ResponseHeader) *hub {
	h := &hub{
		logger:  o.Logger,
		m:       m,
		header:  header,
		retry:   o.RetryDelay,
		started: make(chan struct{}),
		ring:    cache.NewHistory[*revision](o.HistoryRevisions, o.HistoryBytes),
		synced:  newIndex(),
		rebuild: make(chan struct{}, 1),
	}
	if o.CacheMaxBytes > 0 && o.ResponseCacheBytes > 0 {
		h.responses = cache.NewResponses(o.ResponseCacheBytes, 0)
	}
	return h
}

// run consumes the log (h.log, set before) until ctx ends, resuming after errors.
func (h *hub) run(ctx context.Context) error {
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
		// Start far enough back to fill the history ring, and to move the keyspace loaded
		// before the start forward.
		h.applied = max(b.First, b.Last-int64(h.ring.Cap())+1) - 1
		if ks := h.keys.Load(); ks != nil && ks.Rev() >= b.First-1 {
			h.applied = min(h.applied, ks.Rev())
		}
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
		h.applyKeys(e.Rev, nil)
		h.wakeLocked()
		return
	case e.Missing != 0:
		h.logger.Warn("the event log no longer holds some revisions; watchers needing them are compacted",
			"from", e.Missing, "to", e.Rev-1)
		h.compactLocked(e.Rev - 1)
	}
	r := newRevision(e.Revision)
	// The ring holds the logged bytes and the decoded events: about twice the message size.
	if err := h.ring.Append(r.rev, r, 2*int64(e.Size)); err != nil {
		h.ring.Reset()
		_ = h.ring.Append(r.rev, r, 2*int64(e.Size)) // cannot fail on an empty ring
	}
	h.applied = r.rev
	h.applyKeys(r.rev, r)
	h.wakeLocked()
	h.m.revisions.Add(context.Background(), 1)
	if !h.ready && h.applied >= h.readyAt {
		h.ready = true
	}
	if h.synced.size == 0 {
		return
	}
	var hdr *pb.ResponseHeader // built once, for the first response, and shared
	h.synced.each(r, func(g *group) {
		// The group's events are encoded once; each watcher's response adds only its header
		// and id.
		wire, n := g.opts.appendWire(nil, r)
		if n == 0 {
			return
		}
		if hdr == nil {
			hdr = h.header(r.rev)
		}
		// Walk backwards: a watcher that lags is removed by swapping the last one into its
		// slot, which has then been visited already.
		for i := len(g.watchers) - 1; i >= 0; i-- {
			w := g.watchers[i]
			if w.start > r.rev {
				continue
			}
			if !w.stream.trySend(outMsg{resp: eventsResponse(hdr, w.id, wire), w: w, events: n, bytes: len(wire)}) {
				// The stream is full: this watcher catches up from history when it drains.
				h.synced.remove(w)
				w.next = r.rev
				h.m.lagging.Add(context.Background(), 1)
				go h.catchUp(w)
			}
		}
	})
}

// compactLocked records that revisions <= rev are gone and cancels the synced watchers that
// still needed some of them.
func (h *hub) compactLocked(rev int64) {
	h.compact = max(h.compact, rev)
	h.ring.Reset()
	h.synced.all(func(w *watcher) {
		if w.start <= rev {
			h.removeLocked(w)
			go w.stream.sendCompacted(w, h.compactRevLocked()) // never block the hub on a stream
		}
	})
}

// compactRev is compactRevLocked, taking the lock.
func (h *hub) compactRev() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.compactRevLocked()
}

// compactRevLocked is the compact revision clients are told, in etcd's sense: the lowest
// revision a watch may start from. Revisions up to h.compact are gone, so that is h.compact+1,
// except while nothing has been lost: then h.compact is revision 1, the empty start of every
// etcd history, and a watch from it misses nothing.
func (h *hub) compactRevLocked() int64 {
	if h.compact < eventlog.FirstRevision {
		return h.compact
	}
	return h.compact + 1
}

// Errors from registering a watcher.
var errCompacted = errors.New("gateway: start revision compacted")

// add registers w to start at revision start (> 0). It returns errCompacted, with the compact
// revision, if the deployment no longer holds that history.
func (h *hub) add(w *watcher, start int64) (int64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.compactRevLocked(); start < c {
		return c, errCompacted
	}
	h.watchers++
	next := max(start, h.compact+1)
	if next > h.applied {
		w.start = next
		h.synced.add(w)
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
		h.synced.remove(w)
		h.watchers--
	}
}

// progress sends st a progress notification with watch id id, carrying the applied revision,
// if every watcher of ws is synced and none asked to start after that revision (as etcd, which
// otherwise sends nothing).
// Every event up to that revision has been queued on the stream before it, so a client that
// receives it has them all. It never blocks: if the stream is full, nothing is sent, as etcd
// drops a notification its watcher has no room for. With no watchers there is no response.
func (h *hub) progress(st *watchStream, ws []*watcher, id int64) {
	if len(ws) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range ws {
		if w.group == nil || w.startRev > h.applied {
			return
		}
	}
	st.trySend(outMsg{resp: &pb.WatchResponse{Header: h.header(h.applied), WatchId: id}})
}

// status reports the last applied revision and whether the replica has caught up with the log.
func (h *hub) status() (applied int64, ready bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.applied, h.ready
}

// catchUpBatch is how many revisions a catching-up watcher takes from history per lock, and
// at most how many one catch-up response holds (etcd puts up to 1,000 in one).
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
			c := h.compactRevLocked()
			h.mu.Unlock()
			w.stream.sendCompacted(w, c)
			return
		case w.next > h.applied:
			w.start = w.next
			h.synced.add(w)
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
			if !w.deliverBatch(batch, h.header) {
				return
			}
			w.next = batch[len(batch)-1].rev + 1
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

// replay feeds w revisions [w.next, to] from the event log, several revisions per response
// while the log has more ready.
func (h *hub) replay(w *watcher, to int64) error {
	cur, err := h.log.Follow(w.ctx, w.next, 0)
	if err != nil {
		return err
	}
	defer cur.Close()
	var batch []*revision
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if !w.deliverBatch(batch, h.header) {
			return fmt.Errorf("gateway: watcher %d closed", w.id)
		}
		w.next = batch[len(batch)-1].rev + 1
		batch = batch[:0]
		return nil
	}
	for w.next+int64(len(batch)) <= to {
		e, err := cur.Next(w.ctx)
		if err != nil {
			return err
		}
		if e.Missing != 0 || e.Err != nil {
			// The log lost (or cannot give) what w needs: deliver what came before, and record
			// the loss so the loop compacts w.
			if err := flush(); err != nil {
				return err
			}
			lost := e.Rev - 1
			if e.Err != nil {
				lost = e.Rev
			}
			h.mu.Lock()
			h.compact = max(h.compact, lost)
			h.mu.Unlock()
			return nil
		}
		batch = append(batch, newRevision(e.Revision))
		if len(batch) == catchUpBatch || e.Pending == 0 || e.Rev >= to {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
