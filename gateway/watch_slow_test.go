package gateway_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/internal/testenv"
)

// TestStuckClientDoesNotDelayOthers opens a watch stream that never reads (so gRPC flow
// control really stalls it) next to a normal watcher on the same keys, writes far more than the
// stuck stream can buffer, and checks the normal watcher receives every event in order.
func TestStuckClientDoesNotDelayOthers(t *testing.T) {
	const puts = 2000
	ctx := testenv.Context(t, 2*time.Minute)
	p := newParts(t, ctx)
	_, gw := p.runGateway(t, ctx, func(o *gateway.Options) { o.WatchSendBuffer = 16 })
	p.runIngest(t, ctx)

	stuck, err := pb.NewWatchClient(gw.ActiveConnection()).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if err := stuck.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
			CreateRequest: &pb.WatchCreateRequest{Key: []byte("slow/"), RangeEnd: []byte("slow0"), PrevKv: true}}}); err != nil {
			t.Fatal(err)
		}
	}
	// A second client connection, so the stuck stream's connection-level window is not shared.
	other := testenv.Client(t, gw.Endpoints()[0])
	wch := other.Watch(ctx, "slow/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp := <-wch; !resp.Created {
		t.Fatalf("watch not created: %v", resp.Err())
	}

	value := strings.Repeat("x", 4096)
	var last int64
	for i := range puts {
		r, err := p.member.Put(ctx, fmt.Sprintf("slow/%d", i%50), value)
		if err != nil {
			t.Fatal(err)
		}
		last = r.Header.Revision
	}
	next := last - puts + 1
	for next <= last {
		select {
		case resp := <-wch:
			if err := resp.Err(); err != nil {
				t.Fatal(err)
			}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision != next {
					t.Fatalf("got revision %d, want %d", ev.Kv.ModRevision, next)
				}
				next++
			}
		case <-ctx.Done():
			t.Fatalf("healthy watcher stuck at revision %d of %d", next, last)
		}
	}
}
