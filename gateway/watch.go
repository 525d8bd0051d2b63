package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// watchServer implements etcd's Watch service from the hub, never from an etcd watch.
type watchServer struct {
	pb.UnimplementedWatchServer
	s *Server
}

// Watch serves one client watch stream. Like etcd, it keeps serving after the client half-closes
// and ends when the client goes away or a send fails.
func (ws *watchServer) Watch(srv pb.Watch_WatchServer) error {
	s := ws.s
	ctx, cancelCause := context.WithCancelCause(srv.Context())
	defer cancelCause(nil)
	if requiresLeader(ctx) {
		if s.leader.leaderless.Load() {
			return rpctypes.ErrGRPCNoLeader
		}
		defer s.leader.streams.add(cancelCause)()
	}
	st := &watchStream{
		srv:      srv,
		s:        s,
		ctx:      ctx,
		cancel:   func() { cancelCause(nil) },
		out:      make(chan outMsg, s.o.WatchSendBuffer),
		budget:   semaphore.NewWeighted(s.o.WatchSendBytes),
		capacity: s.o.WatchSendBytes,
		watchers: make(map[int64]*watcher),
		progress: make(map[int64]bool),
	}
	if n := s.streams.Add(1); s.o.MaxWatchStreams > 0 && n > int64(s.o.MaxWatchStreams) {
		s.streams.Add(-1)
		return status.Errorf(codes.ResourceExhausted, "gateway: too many watch streams on this replica (limit %d)", s.o.MaxWatchStreams)
	}
	defer s.streams.Add(-1)
	s.m.streams.Add(ctx, 1)
	defer s.m.streams.Add(context.Background(), -1)

	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := st.sendLoop(); err != nil {
			errc <- err
		}
	})
	go func() {
		if err := st.recvLoop(); err != nil {
			errc <- err
		}
	}()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	if errors.Is(err, context.Canceled) {
		err = rpctypes.ErrGRPCWatchCanceled
	}
	st.close()
	wg.Wait()
	return err
}

// watchStream is one client watch stream and its watchers.
type watchStream struct {
	srv    pb.Watch_WatchServer
	s      *Server
	ctx    context.Context // ends with the stream
	cancel context.CancelFunc

	// out carries responses to sendLoop. The hub sends to it without blocking (trySend);
	// catch-up goroutines and the receive loop block on it (send). Its capacity is
	// Options.WatchSendBuffer.
	out chan outMsg
	// budget holds the event bytes queued in out, at most capacity (Options.WatchSendBytes):
	// a response takes its share when queued and gives it back once sent or dropped.
	budget   *semaphore.Weighted
	capacity int64

	mu sync.Mutex
	// Guarded by mu.
	watchers map[int64]*watcher
	nextID   int64 // next automatic watch id, as etcd assigns them
	// progress holds the watchers created with progress_notify: true if the watcher is due a
	// progress notification at the next tick (it received no events since the last one).
	progress map[int64]bool
}

// minWatchProgressInterval is etcd's floor for the progress notify interval.
const minWatchProgressInterval = 100 * time.Millisecond

// progressInterval is the next progress tick's delay: the interval plus up to a tenth of it at
// random, as etcd does, so streams created together do not notify together.
func progressInterval(d time.Duration) time.Duration {
	return d + rand.N(d/10)
}

// outMsg is a response for sendLoop; w is set for event responses, which are dropped if w has
// been canceled by the time they would be sent; events counts their events and bytes their
// encoded size.
type outMsg struct {
	resp   *pb.WatchResponse
	w      *watcher
	events int
	bytes  int
}

// share is the part of the stream's byte budget a response of n bytes takes: n, but never more
// than the whole budget, so that one large response can still go through an empty stream.
func (st *watchStream) share(n int) int64 { return min(int64(n), st.capacity) }

func (st *watchStream) sendLoop() error {
	tick := time.NewTimer(progressInterval(st.s.o.WatchProgressNotifyInterval))
	defer tick.Stop()
	for {
		select {
		case m := <-st.out:
			if m.w != nil && m.w.canceled() {
				st.unreserve(m.bytes)
				continue
			}
			err := st.sendResponse(m)
			st.unreserve(m.bytes)
			if err != nil {
				return err
			}
			if m.events > 0 {
				st.s.m.eventsOut.Add(st.ctx, int64(m.events))
				if m.w.progressNotify {
					st.mu.Lock()
					if st.progress[m.w.id] {
						st.progress[m.w.id] = false // an event response stands for the next notification
					}
					st.mu.Unlock()
				}
			}
		case <-tick.C:
			st.notifyProgress()
			tick.Reset(progressInterval(st.s.o.WatchProgressNotifyInterval))
		case <-st.ctx.Done():
			return nil
		}
	}
}

// sendResponse writes m to the client, in fragments if its watcher asked for them.
func (st *watchStream) sendResponse(m outMsg) error {
	if m.w == nil || !m.w.fragment {
		return st.srv.Send(m.resp)
	}
	for _, f := range fragments(m.resp, m.events, st.s.o.MaxRequestBytes+grpcOverheadBytes) {
		if err := st.srv.Send(f); err != nil {
			return err
		}
	}
	return nil
}

// notifyProgress sends each progress_notify watcher that received no events since the last
// tick a progress notification (if it is synced), and marks them all due again.
func (st *watchStream) notifyProgress() {
	st.mu.Lock()
	var due []*watcher
	for id, ok := range st.progress {
		if w := st.watchers[id]; ok && w != nil {
			due = append(due, w)
		}
		st.progress[id] = true
	}
	st.mu.Unlock()
	for _, w := range due {
		st.s.hub.progress(st, []*watcher{w}, w.id)
	}
}

// requestProgressAll answers a client's progress request as etcd does: if every watcher on the
// stream is synced, one response with watch id -1 and the revision up to which every event has
// been sent; otherwise nothing.
func (st *watchStream) requestProgressAll() {
	st.mu.Lock()
	ws := make([]*watcher, 0, len(st.watchers))
	for _, w := range st.watchers {
		ws = append(ws, w)
	}
	st.mu.Unlock()
	st.s.hub.progress(st, ws, clientv3.InvalidWatchID)
}

func (st *watchStream) recvLoop() error {
	for {
		req, err := st.srv.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch r := req.RequestUnion.(type) {
		case *pb.WatchRequest_CreateRequest:
			if r.CreateRequest != nil {
				st.create(r.CreateRequest)
			}
		case *pb.WatchRequest_CancelRequest:
			if r.CancelRequest != nil {
				st.cancelWatch(r.CancelRequest.WatchId)
			}
		case *pb.WatchRequest_ProgressRequest:
			if r.ProgressRequest != nil {
				st.requestProgressAll()
			}
		}
	}
}

// trySend queues an event response without blocking; false means the stream is full, in
// responses or in bytes.
func (st *watchStream) trySend(m outMsg) bool {
	if !st.tryReserve(m.bytes) {
		return false
	}
	select {
	case st.out <- m:
		return true
	default:
		st.unreserve(m.bytes)
		return false
	}
}

// send queues a response, blocking while the stream is full. w, if set, marks an event
// response. It returns false if w or the stream ended first.
func (st *watchStream) send(w *watcher, m outMsg) bool {
	if !st.reserve(m.bytes) {
		return false
	}
	return st.enqueue(w, m)
}

// reserve takes n bytes of the stream's budget (see share), blocking until they are free; it
// returns false if the stream ended first.
func (st *watchStream) reserve(n int) bool {
	if n == 0 {
		return st.ctx.Err() == nil // control responses take no bytes and never queue behind events
	}
	return st.budget.Acquire(st.ctx, st.share(n)) == nil
}

// tryReserve is reserve without waiting.
func (st *watchStream) tryReserve(n int) bool {
	return n == 0 || st.budget.TryAcquire(st.share(n))
}

// unreserve gives back what reserve took.
func (st *watchStream) unreserve(n int) {
	if n > 0 {
		st.budget.Release(st.share(n))
	}
}

// enqueue queues m, whose bytes are already reserved, blocking while the queue is full. The
// reservation goes with m, or is given back if w or the stream ends first.
func (st *watchStream) enqueue(w *watcher, m outMsg) bool {
	var wdone chan struct{}
	if w != nil {
		wdone = w.done
	}
	select {
	case st.out <- m:
		return true
	case <-wdone:
	case <-st.ctx.Done():
	}
	st.unreserve(m.bytes)
	return false
}

// create handles a WatchCreateRequest as etcd's watch server does.
func (st *watchStream) create(cr *pb.WatchCreateRequest) {
	s := st.s
	key, end := cr.Key, cr.RangeEnd
	if len(key) == 0 {
		key = []byte{0} // the smallest key
	}
	switch {
	case len(end) == 0:
		end = nil
	case len(end) == 1 && end[0] == 0:
		end = []byte{} // every key >= key
	}
	if cr.StartRevision < 0 {
		st.reject(rpctypes.ErrCompacted.Error())
		return
	}
	// As etcd, permission before the range's validity.
	reason, checked, rev := s.watchAuth(st.ctx, key, cr.RangeEnd, cr.StartRevision == 0)
	if reason != "" {
		st.reject(reason)
		return
	}
	if len(end) != 0 && bytes.Compare(key, end) >= 0 {
		st.reject(mvcc.ErrEmptyWatcherRange.Error())
		return
	}

	start := cr.StartRevision
	headerRev, _ := s.hub.status()
	if start == 0 {
		// "From now" means after etcd's current revision, read linearizably, so a client that
		// wrote at revision R and then watches does not receive R.
		if !checked {
			var err error
			if rev, err = s.currentRevision(st.ctx); err != nil {
				st.reject(rpctypes.ErrorDesc(err))
				return
			}
		}
		start, headerRev = rev+1, rev
	}

	st.mu.Lock()
	if st.watchers == nil { // the stream has closed
		st.mu.Unlock()
		return
	}
	id := cr.WatchId
	if id == clientv3.AutoWatchID {
		for st.watchers[st.nextID] != nil {
			st.nextID++
		}
		id = st.nextID
		st.nextID++
	} else if st.watchers[id] != nil {
		st.mu.Unlock()
		st.reject(mvcc.ErrWatcherDuplicateID.Error())
		return
	}
	if limit := s.o.MaxWatchersPerStream; limit > 0 && len(st.watchers) >= limit {
		st.mu.Unlock()
		st.reject(fmt.Sprintf("gateway: too many watchers on this stream (limit %d)", limit))
		return
	}
	if n := s.watchers.Add(1); s.o.MaxWatchers > 0 && n > int64(s.o.MaxWatchers) {
		s.watchers.Add(-1)
		st.mu.Unlock()
		st.reject(fmt.Sprintf("gateway: too many watchers on this replica (limit %d)", s.o.MaxWatchers))
		return
	}
	w := newWatcher(st, id, cr, key, end)
	st.watchers[id] = w
	if cr.ProgressNotify {
		st.progress[id] = true
	}
	st.mu.Unlock()
	s.m.watchers.Add(st.ctx, 1)

	// A past start revision the member has compacted away is compacted here too, even if the
	// event log still holds it: the answer is etcd's. A watch from the compact revision itself
	// gets that revision's events without prev_kv, as from etcd, which reads prev_kv from its
	// store at the revision before. The same read gives the Created header etcd's revision.
	var memberCompact int64
	if cr.StartRevision > 0 && cr.StartRevision <= headerRev {
		var current int64
		memberCompact, current = s.memberCompaction(st.ctx, cr.StartRevision)
		headerRev = max(headerRev, current)
		if cr.StartRevision == memberCompact {
			w.noPrevAt = memberCompact
		}
	}
	st.send(nil, outMsg{resp: &pb.WatchResponse{Header: s.header(headerRev), WatchId: id, Created: true}})
	if cr.StartRevision < memberCompact {
		// etcd's compact revision, unless the log lost more than etcd did: then the first
		// revision a watch can start from here, so the client is not sent back twice.
		w.cancel()
		st.sendCompacted(w, max(memberCompact, s.hub.compactRev()))
		return
	}
	compact, err := s.hub.add(w, start)
	if err != nil {
		w.cancel()
		st.sendCompacted(w, compact)
	}
}

// reject answers a create request that cannot be served, as etcd does: created and canceled at
// once, with watch id -1 and the reason.
func (st *watchStream) reject(reason string) {
	applied, _ := st.s.hub.status()
	st.send(nil, outMsg{resp: &pb.WatchResponse{Header: st.s.header(applied), WatchId: clientv3.InvalidWatchID,
		Created: true, Canceled: true, CancelReason: reason}})
}

// cancelWatch handles a WatchCancelRequest. Like etcd, an unknown id gets no answer.
func (st *watchStream) cancelWatch(id int64) {
	st.mu.Lock()
	w := st.watchers[id]
	delete(st.watchers, id)
	delete(st.progress, id)
	st.mu.Unlock()
	if w == nil {
		return
	}
	st.s.hub.remove(w)
	st.s.watcherGone()
	applied, _ := st.s.hub.status()
	st.send(nil, outMsg{resp: &pb.WatchResponse{Header: st.s.header(applied), WatchId: id, Canceled: true}})
}

// forget drops w from the stream's watchers, if it is still there.
func (st *watchStream) forget(w *watcher) {
	st.mu.Lock()
	if st.watchers[w.id] == w {
		delete(st.watchers, w.id)
		delete(st.progress, w.id)
		st.s.watcherGone()
	}
	st.mu.Unlock()
}

// sendCompacted tells the client that w's history is gone, as etcd does: canceled, with the
// compact revision from which it may watch again, and a header without a revision (etcd's
// compaction notice carries none). w must already be removed from the hub.
func (st *watchStream) sendCompacted(w *watcher, compact int64) {
	st.forget(w)
	st.send(nil, outMsg{resp: &pb.WatchResponse{Header: st.s.header(0), WatchId: w.id,
		CompactRevision: compact, Canceled: true}})
}

// sendCanceled cancels w with a reason. w must already be removed from the hub.
func (st *watchStream) sendCanceled(w *watcher, reason string) {
	st.forget(w)
	applied, _ := st.s.hub.status()
	st.send(nil, outMsg{resp: &pb.WatchResponse{Header: st.s.header(applied), WatchId: w.id,
		Canceled: true, CancelReason: reason}})
}

// close ends the stream and removes its watchers from the hub.
func (st *watchStream) close() {
	st.cancel()
	st.mu.Lock()
	ws := st.watchers
	st.watchers = nil
	st.mu.Unlock()
	for _, w := range ws {
		st.s.hub.remove(w)
		st.s.watcherGone()
	}
}

// watcherGone counts a watcher out of the replica's total.
func (s *Server) watcherGone() {
	s.watchers.Add(-1)
	s.m.watchers.Add(context.Background(), -1)
}
