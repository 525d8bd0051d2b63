package gateway

import (
	"bytes"
	"context"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// watcher is one client watcher (a c-watcher) on one stream.
type watcher struct {
	id       int64
	stream   *watchStream
	ctx      context.Context // the stream's context
	key, end []byte          // end nil: the key alone; end empty: every key >= key; else [key, end)
	prevKV   bool
	noPut    bool
	noDelete bool

	// start is the first revision a synced watcher takes. Guarded by hub.mu.
	start int64
	// next is the next revision to deliver while catching up. It belongs to the catch-up
	// goroutine, which is started (under hub.mu) after it is set.
	next int64

	closed atomic.Bool
	done   chan struct{} // closed by cancel
}

func newWatcher(ws *watchStream, id int64, cr *pb.WatchCreateRequest, key, end []byte) *watcher {
	w := &watcher{id: id, stream: ws, ctx: ws.ctx, key: key, end: end, prevKV: cr.PrevKv,
		done: make(chan struct{})}
	for _, f := range cr.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.noDelete = true
		}
	}
	return w
}

// cancel marks w canceled; it reports whether this call did it.
func (w *watcher) cancel() bool {
	if w.closed.CompareAndSwap(false, true) {
		close(w.done)
		return true
	}
	return false
}

func (w *watcher) canceled() bool { return w.closed.Load() }

func (w *watcher) matches(key []byte) bool {
	switch {
	case w.end == nil:
		return bytes.Equal(key, w.key)
	case len(w.end) == 0:
		return bytes.Compare(key, w.key) >= 0
	default:
		return bytes.Compare(key, w.key) >= 0 && bytes.Compare(key, w.end) < 0
	}
}

// response is w's view of revision r, or nil if none of its events concern w. All of a
// revision's events for w are in one response.
func (w *watcher) response(r *revision, header func(int64) *pb.ResponseHeader) *pb.WatchResponse {
	src := r.events
	if !w.prevKV {
		src = r.withoutPrevKV()
	}
	var evs []*mvccpb.Event
	for i, ev := range r.events {
		if !w.matches(ev.Kv.Key) {
			continue
		}
		if (ev.Type == mvccpb.Event_PUT && w.noPut) || (ev.Type == mvccpb.Event_DELETE && w.noDelete) {
			continue
		}
		evs = append(evs, src[i])
	}
	if len(evs) == 0 {
		return nil
	}
	return &pb.WatchResponse{Header: header(r.rev), WatchId: w.id, Events: evs}
}

// deliver sends w's view of r, blocking while the stream is full. It returns false if w or its
// stream was closed meanwhile.
func (w *watcher) deliver(r *revision, header func(int64) *pb.ResponseHeader) bool {
	resp := w.response(r, header)
	if resp == nil {
		return !w.canceled()
	}
	return w.stream.send(w, resp)
}
