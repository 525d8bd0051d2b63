package gateway

import (
	"fmt"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchgate/watchgate/eventlog"
)

// BenchmarkDispatch measures hub.apply, the hub's whole per-revision path: appending the
// revision to the history ring and handing it to every synced watcher (filter, per-watcher
// response, non-blocking enqueue on the watcher's stream). The revision is one PUT, with
// prev_kv, on the one key that all N watchers watch, so every watcher receives every revision.
//
// Nothing here does I/O or starts goroutines: each watcher has its own stream whose queue
// nobody reads while the clock runs. Every few revisions, before any queue can fill, the timer
// stops and the queues are emptied, so no watcher ever lags and the figures are dispatch alone,
// not the send loops or gRPC.
//
// ns/op and ns/revision are the cost of dispatching one revision; ns/delivery divides that by
// N, the cost per watcher reached (at N=1 it is mostly the fixed per-revision cost).
//
// The idle=N cases add N watchers on other keys, which the revision does not concern: with the
// watchers indexed by key, dispatch should cost what it costs without them.
func BenchmarkDispatch(b *testing.B) {
	for _, c := range []struct {
		n, idle int
		prefix  bool
	}{{1, 0, false}, {100, 0, false}, {1000, 0, false}, {10000, 0, false}, {100, 99900, false}, {100, 99900, true}} {
		name := fmt.Sprintf("watchers=%d", c.n)
		if c.idle > 0 {
			name += fmt.Sprintf("/idle=%d", c.idle)
		}
		if c.prefix {
			name += "/prefixes"
		}
		b.Run(name, func(b *testing.B) {
			benchmarkDispatch(b, c.n, c.idle, c.prefix)
		})
	}
}

// benchmarkDispatch: n watchers on the revision's key (or, with prefix, on a prefix of it) and
// idle watchers on other keys (other prefixes).
func benchmarkDispatch(b *testing.B, n, idle int, prefix bool) {
	// watchOn is the create request of a watcher of key k (or of prefix k/).
	watchOn := func(k string) (*pb.WatchCreateRequest, []byte, []byte) {
		if prefix {
			p := k[:len(k)-1]
			end := []byte(clientv3.GetPrefixRangeEnd(p))
			return &pb.WatchCreateRequest{Key: []byte(p), RangeEnd: end, PrevKv: true}, []byte(p), end
		}
		return &pb.WatchCreateRequest{Key: []byte(k), PrevKv: true}, []byte(k), nil
	}
	// Keep at most about 64k responses queued between drains, and never more per stream than
	// the production default of 256, so setup and memory stay small at every N.
	queue := min(max(1<<16/n, 1), 256)

	s := newBareServer(b, Options{})

	key := "/registry/configmaps/default/benchmark"
	key += strings.Repeat("k", 100-len(key))
	ctx := b.Context()
	streams := make([]*watchStream, n)
	for i := range streams {
		st := s.bareStream(ctx, queue)
		cr, k, end := watchOn(key)
		w := newWatcher(st, 0, cr, k, end)
		st.watchers[w.id] = w
		if _, err := s.hub.add(w, 1); err != nil {
			b.Fatal(err)
		}
		streams[i] = st
	}
	// The idle watchers share one stream: nothing is ever sent to it.
	idleStream := s.bareStream(ctx, 0)
	for i := range idle {
		cr, k, end := watchOn(fmt.Sprintf("/registry/configmaps/idle/%08d/x", i))
		w := newWatcher(idleStream, int64(i), cr, k, end)
		if _, err := s.hub.add(w, 1); err != nil {
			b.Fatal(err)
		}
	}

	// One event shared by every revision: the hub never looks inside beyond the key and type,
	// and building a fresh one each time would measure the allocator, not dispatch.
	value := []byte(strings.Repeat("v", 1024))
	evs := []*mvccpb.Event{{
		Type:   mvccpb.Event_PUT,
		Kv:     &mvccpb.KeyValue{Key: []byte(key), Value: value, CreateRevision: 1, ModRevision: 2, Version: 2},
		PrevKv: &mvccpb.KeyValue{Key: []byte(key), Value: value, CreateRevision: 1, ModRevision: 1, Version: 1},
	}}
	body, err := eventlog.Encode(evs)
	if err != nil {
		b.Fatal(err)
	}

	delivered := 0
	drain := func() {
		for _, st := range streams {
			for len(st.out) > 0 {
				got := <-st.out
				if got.events != 1 {
					b.Fatalf("response with %d events, want 1", got.events)
				}
				st.unreserve(got.bytes) // as the send loop does once it has sent it
				delivered++
			}
		}
	}

	rev := int64(1)
	queued := 0
	b.ReportAllocs()
	for b.Loop() {
		if queued == queue {
			b.StopTimer()
			drain()
			queued = 0
			b.StartTimer()
		}
		s.hub.apply(eventlog.Entry{Revision: eventlog.Revision{Rev: rev, Events: evs, Wire: [][]byte{body[:len(body):len(body)]}, Size: len(body)}})
		rev++
		queued++
	}
	drain()

	s.hub.mu.Lock()
	synced := s.hub.synced.size
	s.hub.mu.Unlock()
	if synced != n+idle || delivered != n*b.N {
		b.Fatalf("%d of %d watchers still synced, %d of %d responses delivered", synced, n+idle, delivered, n*b.N)
	}
	perRevision := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(perRevision, "ns/revision")
	b.ReportMetric(perRevision/float64(n), "ns/delivery")
}
