package gateway

import (
	"context"
	"log/slog"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.opentelemetry.io/otel/metric/noop"
	"golang.org/x/sync/semaphore"

	"github.com/watchgate/watchgate/eventlog"
)

// A bare replica: the hub and watch streams without gRPC, NATS or etcd, for tests and benchmarks
// of what happens inside one replica. Revisions are applied by hand; streams are read (or not)
// by hand.

func newBareServer(tb testing.TB, o Options) *Server {
	tb.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Member, o.JetStream = nil, nil
	if o.HistoryRevisions == 0 {
		o.HistoryRevisions = 10000
	}
	if o.HistoryBytes == 0 {
		o.HistoryBytes = 64 << 20
	}
	if o.WatchSendBuffer == 0 {
		o.WatchSendBuffer = 256
	}
	if o.WatchSendBytes == 0 {
		o.WatchSendBytes = 1 << 20
	}
	m, err := newMetrics(noop.NewMeterProvider().Meter(""))
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{o: o, m: m}
	s.hdr.Store(&pb.ResponseHeader{ClusterId: 14841639068965178418, MemberId: 10276657743932975437, RaftTerm: 2})
	s.hub = newHub(o, m, s.header)
	return s
}

// bareStream is a watch stream nobody reads unless the test drains out.
func (s *Server) bareStream(ctx context.Context, queue int) *watchStream {
	return &watchStream{s: s, ctx: ctx, out: make(chan outMsg, queue), watchers: make(map[int64]*watcher),
		progress: make(map[int64]bool), budget: semaphore.NewWeighted(s.o.WatchSendBytes), capacity: s.o.WatchSendBytes}
}

// bareEntry is log entry rev: one PUT of value on key, with prev_kv, as ingest logs it.
func bareEntry(tb testing.TB, rev int64, key string, value []byte) eventlog.Entry {
	tb.Helper()
	evs := []*mvccpb.Event{{
		Type:   mvccpb.PUT,
		Kv:     &mvccpb.KeyValue{Key: []byte(key), Value: value, CreateRevision: 1, ModRevision: rev, Version: rev},
		PrevKv: &mvccpb.KeyValue{Key: []byte(key), Value: value, CreateRevision: 1, ModRevision: rev - 1, Version: rev - 1},
	}}
	m, err := eventlog.NewMsg("s", rev, evs)
	if err != nil {
		tb.Fatal(err)
	}
	r, err := eventlog.Decode(uint64(rev), m.Header, m.Data)
	if err != nil {
		tb.Fatal(err)
	}
	return eventlog.Entry{Revision: r}
}
