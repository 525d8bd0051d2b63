package gateway_test

import (
	"strconv"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/internal/testenv"
)

// sumCounter reads the sum of the counter (or up-down counter) name over its attributes.
func sumCounter(t *testing.T, r *sdkmetric.ManualReader, name string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, dp := range sum.DataPoints {
					n += dp.Value
				}
			}
		}
	}
	return n
}

// TestForeignLogMessages: another program publishes on the event log's subject while ingest is
// away (a stray `nats pub`, a bridge replaying the stream, a misconfigured application). Its
// messages take the next revision slots, and the fence makes ingest resume after them, so the
// real revisions of those slots never reach the log. Three kinds land there: a replayed copy of
// the previous revision (its own revision header, no message id), a watchgate header with a body
// that is not a list of events, and data that is not watchgate's at all.
//
// The replica must reject all three (counting each in watchgate.gateway.log_rejected), keep
// applying the revisions after them, answer reads with the lost writes in them (its keyspace
// cache is dropped and rebuilt from etcd), and treat the lost revisions as compacted: a watcher
// that needed them is canceled with a compact revision, never handed the foreign content or a
// silent gap.
func TestForeignLogMessages(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	_, kill := p.runIngest(t, ctx)
	reader := sdkmetric.NewManualReader()
	srv, gw := p.runGateway(t, ctx, func(o *gateway.Options) {
		o.Meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("")
	})
	putRev := func(key, value string) int64 {
		t.Helper()
		r, err := p.member.Put(ctx, key, value)
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	putRev("lr/x", "before")
	last := putRev("lr/a", "before")
	waitApplied(ctx, t, last, srv)
	waitReady(ctx, t, srv)

	// A watcher that is synced when the foreign messages arrive.
	synced := gw.Watch(ctx, "lr/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp := <-synced; !resp.Created {
		t.Fatalf("watch not created: %v", resp.Err())
	}

	// Ingest goes away; etcd moves on by three revisions, whose slots foreign messages take.
	kill()
	for _, v := range []string{"lost-1", "lost-2", "lost-3"} {
		putRev("lr/a", v)
	}
	stream, err := p.js.Stream(ctx, p.log.Stream())
	if err != nil {
		t.Fatal(err)
	}
	prev, err := stream.GetMsg(ctx, uint64(last))
	if err != nil {
		t.Fatal(err)
	}
	replay := nats.NewMsg(p.log.Subject())
	replay.Data = prev.Data
	replay.Header.Set(eventlog.HeaderRevision, prev.Header.Get(eventlog.HeaderRevision))
	garbage := nats.NewMsg(p.log.Subject())
	garbage.Data = append([]byte{0x5a, 0x7f}, prev.Data...) // an events field longer than the body
	garbage.Header.Set(eventlog.HeaderRevision, strconv.FormatInt(last+2, 10))
	foreign := nats.NewMsg(p.log.Subject())
	foreign.Data = []byte(`{"event":"user.created","id":42}`)
	for i, m := range []*nats.Msg{replay, garbage, foreign} {
		ack, err := p.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequence(uint64(last)+uint64(i)))
		if err != nil {
			t.Fatal(err)
		}
		if want := uint64(last) + uint64(i) + 1; ack.Sequence != want {
			t.Fatalf("foreign message %d landed at %d, want %d", i, ack.Sequence, want)
		}
	}
	lost := last + 3
	p.runIngest(t, ctx) // resumes after the log's last message
	after := putRev("lr/b", "after")
	if after != lost+1 {
		t.Fatalf("etcd wrote revision %d, want %d", after, lost+1)
	}
	waitApplied(ctx, t, after, srv)

	if got := sumCounter(t, reader, "watchgate.gateway.log_rejected"); got != 3 {
		t.Errorf("log_rejected = %d, want 3", got)
	}
	if got := sumCounter(t, reader, "watchgate.gateway.keyspace_drops"); got < 1 {
		t.Errorf("keyspace_drops = %d: the cache was kept across revisions it could not read", got)
	}

	// The synced watcher needed the first rejected revision: canceled, told to start after it,
	// with nothing of the foreign content.
	select {
	case resp := <-synced:
		if len(resp.Events) != 0 || !resp.Canceled || resp.CompactRevision != last+2 || resp.Err() != rpctypes.ErrCompacted {
			t.Fatalf("synced watcher got %+v (err %v), want canceled, compacted at %d, without events", resp, resp.Err(), last+2)
		}
	case <-ctx.Done():
		t.Fatal("the synced watcher was not canceled")
	}

	// A new watch that needs a lost revision, the last one included, is compacted at the first
	// revision after them; one from there gets etcd's events.
	for _, from := range []int64{last, lost} {
		resp := <-gw.Watch(ctx, "lr/", clientv3.WithPrefix(), clientv3.WithRev(from))
		if len(resp.Events) != 0 || !resp.Canceled || resp.CompactRevision != lost+1 || resp.Err() != rpctypes.ErrCompacted {
			t.Fatalf("watch from %d: got %+v (err %v), want canceled, compacted at %d", from, resp, resp.Err(), lost+1)
		}
	}
	want := (<-p.member.Watch(ctx, "lr/", clientv3.WithPrefix(), clientv3.WithRev(lost+1), clientv3.WithPrevKV())).Events
	got := (<-gw.Watch(ctx, "lr/", clientv3.WithPrefix(), clientv3.WithRev(lost+1), clientv3.WithPrevKV())).Events
	if len(want) != 1 {
		t.Fatalf("etcd's watch from %d: %v", lost+1, want)
	}
	if diff := gocmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("watch from %d (-etcd +gateway):\n%s", lost+1, diff)
	}

	// Reads hold the writes of the lost revisions, as etcd's do, whether they pass through or
	// (once the keyspace cache is rebuilt from etcd) are answered from the cache.
	compare := func(serializable bool) {
		t.Helper()
		r := &pb.RangeRequest{Key: []byte("lr/"), RangeEnd: []byte("lr0"), Serializable: serializable}
		want := doRange(ctx, pb.NewKVClient(p.member.ActiveConnection()), r)
		if diff := gocmp.Diff(want, doRange(ctx, pb.NewKVClient(gw.ActiveConnection()), r), protocmp.Transform()); diff != "" {
			t.Fatalf("range (serializable %v) differs from etcd's (-etcd +gateway):\n%s", serializable, diff)
		}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		cached := srv.ReadStats().Cached
		compare(false)
		compare(true)
		if srv.ReadStats().Cached > cached {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("reads never came from the keyspace cache again")
		case <-tick.C:
		}
	}

	// A write after the lost revisions is delivered to a watcher from now.
	now := gw.Watch(ctx, "lr/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp := <-now; !resp.Created {
		t.Fatalf("watch not created: %v", resp.Err())
	}
	next := putRev("lr/c", "next")
	select {
	case resp := <-now:
		if len(resp.Events) != 1 || resp.Events[0].Kv.ModRevision != next || resp.Events[0].Type != mvccpb.PUT {
			t.Fatalf("watcher from now got %+v (err %v), want the put at %d", resp.Events, resp.Err(), next)
		}
	case <-ctx.Done():
		t.Fatal("no event after the foreign messages")
	}
}
