package gateway_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/internal/testenv"
)

// replica is a gateway replica and the reader of its metrics.
type replica struct {
	srv      *gateway.Server
	endpoint string
	metrics  *sdkmetric.ManualReader
}

func startReplica(t *testing.T, ctx context.Context, p *parts) *replica {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	srv, cli := p.runGateway(t, ctx, func(o *gateway.Options) {
		o.Meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("")
	})
	waitReady(ctx, t, srv)
	return &replica{srv: srv, endpoint: cli.Endpoints()[0], metrics: reader}
}

// watchStreams reads the replica's open watch streams gauge.
func (r *replica) watchStreams(t *testing.T) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.metrics.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == "watchgate.gateway.watch_streams" {
				for _, dp := range sum.DataPoints {
					n += dp.Value
				}
			}
		}
	}
	return n
}

// TestDrainMovesWatchesToAnotherReplica drains the replica a client watches through while a
// writer keeps writing: the watch ends with etcd's retryable "server stopped" error, clientv3
// reopens it on the other replica from the revision after the last one it received, and the
// client sees every write once, in order. The drained replica refuses new streams and reports
// not ready, and its unary calls still work until it stops.
func TestDrainMovesWatchesToAnotherReplica(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	p.runIngest(t, ctx)
	a, b := startReplica(t, ctx, p), startReplica(t, ctx, p)

	cli := testenv.Client(t, a.endpoint) // the watch opens on a
	wch := cli.Watch(clientv3.WithRequireLeader(ctx), "drain/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp := <-wch; !resp.Created {
		t.Fatalf("watch not created: %v", resp.Err())
	}
	cli.SetEndpoints(a.endpoint, b.endpoint)

	const writes = 200
	revs := make(chan int64, writes)
	go func() {
		defer close(revs)
		for i := range writes {
			resp, err := p.member.Put(ctx, fmt.Sprintf("drain/%03d", i%17), fmt.Sprint(i))
			if err != nil {
				t.Errorf("put %d: %v", i, err)
				return
			}
			revs <- resp.Header.Revision
		}
	}()

	var got []int64
	drained := false
	for len(got) < writes {
		select {
		case resp, ok := <-wch:
			if !ok {
				t.Fatalf("watch closed after %d events: %v", len(got), ctx.Err())
			}
			if err := resp.Err(); err != nil {
				t.Fatalf("watch error reached the client after %d events: %v", len(got), err)
			}
			for _, ev := range resp.Events {
				got = append(got, ev.Kv.ModRevision)
			}
			if !drained && len(got) >= writes/4 {
				drained = true
				a.srv.Drain()
				if a.srv.Ready() {
					t.Error("a draining replica reports ready")
				}
				if _, err := testenv.Client(t, a.endpoint).Get(ctx, "drain/000", clientv3.WithSerializable()); err != nil {
					t.Errorf("unary call on a draining replica: %v", err)
				}
				ws, err := pb.NewWatchClient(testenv.Client(t, a.endpoint).ActiveConnection()).Watch(ctx)
				if err == nil {
					_, err = ws.Recv()
				}
				if status.Code(err) != codes.Unavailable || rpctypes.ErrorDesc(err) != "etcdserver: server stopped" {
					t.Errorf("new watch stream on a draining replica: %v, want %v", err, rpctypes.ErrGRPCStopped)
				}
			}
		case <-ctx.Done():
			t.Fatalf("got %d of %d events", len(got), writes)
		}
	}
	var want []int64
	for r := range revs {
		want = append(want, r)
	}
	if len(want) != writes {
		t.Fatalf("the writer made %d writes", len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d at revision %d, want %d (a gap, a repeat or a reordering)", i, got[i], want[i])
		}
	}
	if !drained {
		t.Fatal("the replica was never drained")
	}
	if n := a.watchStreams(t); n != 0 {
		t.Errorf("the drained replica still has %d watch streams", n)
	}
	if n := b.watchStreams(t); n != 1 {
		t.Errorf("the other replica has %d watch streams, want the client's one", n)
	}
}
