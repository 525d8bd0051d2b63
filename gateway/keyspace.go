package gateway

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/watchgate/watchgate/cache"
)

// The keyspace cache is a snapshot of the member read at one revision R, then moved forward by
// every revision the hub applies after R, so it always reflects one revision of etcd: never a
// torn transaction. It is built at startup (a replica whose prefixes outgrow CacheMaxBytes
// fails there, rather than later by running out of memory) and rebuilt whenever it cannot
// follow the log: the log lost revisions, a message could not be decoded, or the keyspace
// outgrew its bound. While it is being rebuilt, reads pass through to the member.

// loadPage is how many keys one page of the snapshot asks a member without RangeStream for.
// Such a member counts the rest of the range for every page, so a load costs it about K²/loadPage
// key visits: pages are large.
const loadPage = 10000

// loadKeyspace reads the cached prefixes from the member into a new keyspace: the first prefix
// linearizably, which fixes the revision R, every other at R. It streams each prefix
// (RangeStream, etcd 3.7), which etcd reads at one revision without counting; a member without
// RangeStream is read in pages instead.
func (s *Server) loadKeyspace(ctx context.Context) (*cache.Keyspace, error) {
	ks := cache.NewKeyspace(s.o.CachePrefixes, s.o.CacheMaxBytes)
	prefixes := s.o.CachePrefixes
	if len(prefixes) == 0 {
		prefixes = []string{""}
	}
	var rev int64
	stream := true
	for _, p := range prefixes {
		key, end := p, clientv3.GetPrefixRangeEnd(p)
		if p == "" {
			key, end = "\x00", "\x00"
		}
		var err error
		if stream {
			var r int64
			r, err = s.streamPrefix(ctx, ks, key, end, rev)
			if status.Code(err) == codes.Unimplemented {
				stream = false
			} else if rev == 0 {
				rev = r
			}
		}
		if !stream {
			rev, err = s.pagePrefix(ctx, ks, key, end, rev, loadPage)
		}
		if err != nil {
			return nil, err
		}
	}
	if rev == 0 {
		return nil, errors.New("reading the keyspace from the member: no revision")
	}
	return ks, ks.Insert(rev, nil)
}

// streamPrefix streams [key, end) at revision rev (0: the current one, read linearizably)
// into ks, and returns the revision it was read at.
func (s *Server) streamPrefix(ctx context.Context, ks *cache.Keyspace, key, end string, rev int64) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream if a chunk fails to insert
	opts := []clientv3.OpOption{clientv3.WithRange(end)}
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	chunks, err := s.o.Member.GetStream(ctx, key, opts...)
	if err != nil {
		return 0, err
	}
	var at int64
	for c := range chunks {
		if err := c.Err(); err != nil {
			return 0, err
		}
		if err := ks.Insert(rev, c.Kvs); err != nil {
			return 0, err
		}
		if c.Header != nil {
			at = c.Header.Revision
		}
	}
	if at == 0 {
		return 0, errors.New("reading the keyspace from the member: the stream ended without a revision")
	}
	return at, nil
}

// pagePrefix reads [key, end) at revision rev (0: the current one, read linearizably, for the
// first page) into ks in pages of page keys, and returns the revision it was read at.
func (s *Server) pagePrefix(ctx context.Context, ks *cache.Keyspace, key, end string, rev int64, page int64) (int64, error) {
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.o.Member.Get(ctx, key, opts...)
		if err != nil {
			return 0, fmt.Errorf("reading the keyspace from the member: %w", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		if err := ks.Insert(rev, resp.Kvs); err != nil {
			return 0, err
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// keepKeyspace rebuilds the keyspace whenever the hub drops it, until ctx ends.
func (s *Server) keepKeyspace(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.hub.rebuild:
		}
		for ctx.Err() == nil {
			err := s.buildKeyspace(ctx)
			if err == nil {
				break
			}
			delay := s.o.RetryDelay
			if errors.Is(err, cache.ErrTooBig) {
				delay = time.Minute // it will not fit until keys are deleted
			}
			s.o.Logger.Error("keyspace cache not rebuilt; reads pass through to the member", "err", err, "retry_in", delay)
			select {
			case <-ctx.Done():
			case <-time.After(delay):
			}
		}
	}
}

// buildKeyspace loads the keyspace and hands it to the hub.
func (s *Server) buildKeyspace(ctx context.Context) error {
	start := time.Now()
	ks, err := s.loadKeyspace(ctx)
	if err != nil {
		return err
	}
	if err := s.hub.catchUpKeys(ctx, ks); err != nil {
		return err
	}
	if err := s.hub.install(ks); err != nil {
		return err
	}
	n, bytes := ks.Stats()
	s.o.Logger.Info("keyspace cache loaded", "keys", n, "bytes", bytes, "revision", ks.Rev(), "took", time.Since(start))
	return nil
}

// catchUpKeys moves ks forward by reading the event log, while the history ring no longer
// holds the revisions that follow it: a large keyspace loaded under a steady stream of writes
// can take longer to read than the ring lasts. The log is read without the hub's lock; install
// then finishes from the ring.
func (h *hub) catchUpKeys(ctx context.Context, ks *cache.Keyspace) error {
	for {
		h.mu.Lock()
		applied, oldest, held := h.applied, h.ring.Oldest(), h.ring.Len()
		h.mu.Unlock()
		next := ks.Rev() + 1
		if next > applied || (held > 0 && oldest <= next) {
			return nil
		}
		to := applied
		if held > 0 {
			to = oldest - 1
		}
		if err := h.applyFromLog(ctx, ks, next, to); err != nil {
			return err
		}
	}
}

// applyFromLog applies revisions [from, to] from the event log to ks.
func (h *hub) applyFromLog(ctx context.Context, ks *cache.Keyspace, from, to int64) error {
	cur, err := h.log.Follow(ctx, from, 0)
	if err != nil {
		return err
	}
	defer cur.Close()
	for ks.Rev() < to {
		e, err := cur.Next(ctx)
		switch {
		case err != nil:
			return err
		case e.Missing != 0 || e.Err != nil:
			return fmt.Errorf("%w (revision %d cannot be read from the event log)", errBehindHistory, ks.Rev()+1)
		}
		if err := ks.Apply(e.Rev, e.Events); err != nil {
			return err
		}
	}
	return nil
}

// errBehindHistory is returned by install when the keyspace was read at a revision the
// history ring no longer holds the revisions after.
var errBehindHistory = errors.New("gateway: the keyspace snapshot is older than the history held")

// install makes ks, read at a revision of its own, the hub's keyspace: it is first moved
// forward through the history ring to the revision the hub has applied, if it is behind.
func (h *hub) install(ks *cache.Keyspace) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for rev := ks.Rev() + 1; rev <= h.applied; rev++ {
		r, ok := h.ring.Get(rev)
		if !ok {
			return fmt.Errorf("%w (revision %d)", errBehindHistory, rev)
		}
		if err := ks.Apply(rev, r.events); err != nil {
			return err
		}
	}
	h.keys.Store(ks)
	h.loaded.Store(true)
	if h.responses != nil {
		h.responses.Reset(ks.Rev())
	}
	h.wakeLocked()
	return nil
}

// applyKeys moves the keyspace to revision r (nil: revision rev could not be read from the
// log). A keyspace that cannot follow is dropped and rebuilt.
func (h *hub) applyKeys(rev int64, r *revision) {
	if r != nil {
		for _, ev := range r.events {
			if ev.PrevKv == nil && cache.NeedsPrevKV(ev) {
				// etcd had compacted the previous value before ingest read the event.
				h.noPrevKV = rev
			}
		}
	}
	ks := h.keys.Load()
	if ks == nil || rev <= ks.Rev() {
		return // no keyspace, or its snapshot has the revision already
	}
	err := errors.New("a revision could not be read from the event log")
	if r != nil {
		if err = ks.Apply(rev, r.events); err == nil {
			if h.responses != nil {
				h.responses.Invalidate(rev, r.events)
			}
			return
		}
	}
	h.logger.Error("keyspace cache dropped; reads pass through to the member until it is rebuilt",
		"revision", rev, "err", err)
	h.keys.Store(nil)
	h.m.cacheDrops.Add(context.Background(), 1)
	select {
	case h.rebuild <- struct{}{}:
	default:
	}
}

// appliedWaiter is a read waiting for the keyspace to reach rev.
type appliedWaiter struct {
	rev  int64
	done chan struct{}
	i    int // its index in the heap, -1 once out of it
}

// waiterHeap orders the waiting reads by revision, lowest first, so a revision applied wakes
// exactly the reads it satisfies and a read giving up leaves in logarithmic time.
type waiterHeap []*appliedWaiter

func (q waiterHeap) Len() int           { return len(q) }
func (q waiterHeap) Less(i, j int) bool { return q[i].rev < q[j].rev }
func (q waiterHeap) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].i, q[j].i = i, j
}
func (q *waiterHeap) Push(x any) {
	w := x.(*appliedWaiter)
	w.i = len(*q)
	*q = append(*q, w)
}
func (q *waiterHeap) Pop() any {
	old := *q
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	w.i = -1
	return w
}

// wakeLocked releases the waiters the keyspace has reached (all of them if it was dropped).
func (h *hub) wakeLocked() {
	if len(h.waiters) == 0 {
		return
	}
	reached := int64(math.MaxInt64)
	if ks := h.keys.Load(); ks != nil {
		reached = ks.Rev()
	}
	for len(h.waiters) > 0 && h.waiters[0].rev <= reached {
		close(heap.Pop(&h.waiters).(*appliedWaiter).done)
	}
}

// waitKeys waits up to bound for the keyspace to reach revision rev, and returns it if it
// did (nil if not, or if there is no keyspace).
func (h *hub) waitKeys(ctx context.Context, rev int64, bound time.Duration) *cache.Keyspace {
	if ks := h.keys.Load(); ks == nil || ks.Rev() >= rev {
		return ks
	}
	h.mu.Lock()
	ks := h.keys.Load()
	if ks == nil || ks.Rev() >= rev {
		h.mu.Unlock()
		return ks
	}
	w := &appliedWaiter{rev: rev, done: make(chan struct{})}
	heap.Push(&h.waiters, w)
	h.mu.Unlock()

	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
	case <-ctx.Done():
	}
	h.mu.Lock()
	if w.i >= 0 {
		heap.Remove(&h.waiters, w.i)
	}
	h.mu.Unlock()
	if ks := h.keys.Load(); ks != nil && ks.Rev() >= rev {
		return ks
	}
	return nil
}

// history returns a view of the keyspace and, oldest first, every event after revision at up
// to the view's revision, if the history ring holds them all and they can be rolled back.
func (h *hub) history(at int64) (cache.View, []*mvccpb.Event, bool) {
	h.mu.Lock()
	ks := h.keys.Load()
	if ks == nil || ks.Rev() != h.applied || at < h.noPrevKV || h.ring.Len() == 0 || h.ring.Oldest() > at+1 {
		h.mu.Unlock()
		return cache.View{}, nil, false
	}
	v := ks.View()
	revs := h.ring.From(nil, at+1, int(h.applied-at))
	h.mu.Unlock()
	var events []*mvccpb.Event
	for _, r := range revs {
		events = append(events, r.events...)
	}
	return v, events, true
}
