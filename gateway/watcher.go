package gateway

import (
	"context"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// watchOpts is what a watcher selects from each revision. Watchers with equal options receive
// the same events, so they share one index group and one encoding per revision.
type watchOpts struct {
	key, end string // end "": the key alone; end "\x00": every key >= key; else [key, end)
	prevKV   bool
	noPut    bool
	noDelete bool
}

// Watch ranges as etcd's WatchCreateRequest expresses them.
const fromKeyEnd = "\x00" // range_end of "every key >= key"

func (o *watchOpts) single() bool { return o.end == "" }

func (o *watchOpts) matches(key []byte) bool {
	switch {
	case o.end == "":
		return string(key) == o.key
	case o.end == fromKeyEnd:
		return string(key) >= o.key // compared in place: no conversion is allocated
	default:
		return string(key) >= o.key && string(key) < o.end
	}
}

// selects reports whether event i of r is one the options deliver.
func (o *watchOpts) selects(r *revision, i int) bool {
	ev := r.events[i]
	if !o.matches(ev.Kv.Key) {
		return false
	}
	if ev.Type == mvccpb.PUT {
		return !o.noPut
	}
	return !o.noDelete
}

// appendWire appends the wire encoding of r's events selected by o to dst and returns it with
// the number of events appended. With an empty dst and one event selected (the common case) it
// returns that event's shared bytes without copying; they are full to capacity, so appending
// to them copies.
func (o *watchOpts) appendWire(dst []byte, r *revision) ([]byte, int) {
	wire := r.wire
	if !o.prevKV {
		wire = r.wireWithoutPrevKV()
	}
	n, one := 0, -1
	for i := range r.events {
		if o.selects(r, i) {
			n, one = n+1, i
		}
	}
	switch {
	case n == 0:
		return dst, 0
	case n == 1 && len(dst) == 0:
		return wire[one], 1
	}
	for i := range r.events {
		if o.selects(r, i) {
			dst = append(dst, wire[i]...)
		}
	}
	return dst, n
}

// watcher is one client watcher (a c-watcher) on one stream.
type watcher struct {
	watchOpts
	id     int64
	stream *watchStream
	ctx    context.Context // the stream's context

	// startRev is the start revision the client asked for (0: from now).
	startRev int64
	// fragment: the client asked for large responses to be split (WatchCreateRequest.fragment).
	fragment bool
	// progressNotify: the client asked for progress notifications (so the stream tracks them).
	progressNotify bool
	// noPrevAt is a revision whose events this watcher gets without prev_kv: the member's
	// compact revision, when the watcher starts there (etcd can no longer read the previous
	// values). Set before the watcher is registered.
	noPrevAt int64
	// start is the first revision a synced watcher takes. Guarded by hub.mu.
	start int64
	// next is the next revision to deliver while catching up. It belongs to the catch-up
	// goroutine, which is started (under hub.mu) after it is set.
	next int64
	// group is the index group of a synced watcher, nil while it catches up, and slot its
	// place in the group. Guarded by hub.mu.
	group *group
	slot  int

	closed atomic.Bool
	done   chan struct{} // closed by cancel
}

func newWatcher(ws *watchStream, id int64, cr *pb.WatchCreateRequest, key, end []byte) *watcher {
	w := &watcher{id: id, stream: ws, ctx: ws.ctx, done: make(chan struct{}), startRev: cr.StartRevision, fragment: cr.Fragment, progressNotify: cr.ProgressNotify,
		watchOpts: watchOpts{key: string(key), prevKV: cr.PrevKv}}
	switch {
	case end == nil:
	case len(end) == 0:
		w.end = fromKeyEnd
	default:
		w.end = string(end)
	}
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

// eventsResponse is a response carrying already encoded events: wire is appended to the
// message as it is marshalled (as unknown fields, which is how protobuf keeps bytes it does not
// parse), so the events are encoded once for every watcher that receives them and only the
// header and watch id are marshalled per watcher.
func eventsResponse(hdr *pb.ResponseHeader, id int64, wire []byte) *pb.WatchResponse {
	resp := &pb.WatchResponse{Header: hdr, WatchId: id}
	resp.ProtoReflect().SetUnknown(wire)
	return resp
}

// catchUpBytes is about the size of one catch-up response: it holds whole revisions and stops
// once it reaches this size. Its stream budget is reserved before it is built, so a watcher
// waiting for room in its stream holds no response in memory.
const catchUpBytes = 16 << 10

// deliverBatch sends w its events from revs, several revisions per response as etcd does for a
// catching-up watcher, blocking while the stream is full. A revision is never split. It returns
// false if w or its stream was closed meanwhile.
func (w *watcher) deliverBatch(revs []*revision, header func(int64) *pb.ResponseHeader) bool {
	for len(revs) > 0 {
		if !w.stream.reserve(catchUpBytes) {
			return false
		}
		var wire []byte
		n := 0
		last := revs[0]
		for len(revs) > 0 && len(wire) < catchUpBytes {
			o := &w.watchOpts
			if revs[0].rev == w.noPrevAt && o.prevKV {
				noPrev := *o
				noPrev.prevKV = false
				o = &noPrev
			}
			var k int
			wire, k = o.appendWire(wire, revs[0])
			n += k
			last, revs = revs[0], revs[1:]
		}
		if n == 0 {
			w.stream.unreserve(catchUpBytes)
			continue
		}
		// The reservation stands for the response: at most one revision more than reserved.
		m := outMsg{resp: eventsResponse(header(last.rev), w.id, wire), w: w, events: n, bytes: catchUpBytes}
		if !w.stream.enqueue(w, m) {
			return false
		}
	}
	return !w.canceled()
}
