package gateway_test

import (
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchgate/watchgate/internal/stack"
	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// TestRequireLeader: when the replica loses its event log, a watch that requires a leader ends
// with etcd's no-leader error (as etcd ends it when its member loses the leader), a new one is
// refused with it, a watch that does not require a leader stays open, and reads go to etcd.
func TestRequireLeader(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	st := stacktest.Start(t, func(o *stack.Options) { o.Gateway.LeaderCheckInterval = 50 * time.Millisecond })
	gw := testenv.Client(t, st.ClientURL)

	leaderCtx := clientv3.WithRequireLeader(ctx)
	required := gw.Watch(leaderCtx, "leader/a", clientv3.WithCreatedNotify())
	plain := gw.Watch(ctx, "leader/b", clientv3.WithCreatedNotify())
	for _, wch := range []clientv3.WatchChan{required, plain} {
		if resp := <-wch; !resp.Created {
			t.Fatalf("not created: %v", resp.Err())
		}
	}

	st.NATS.Shutdown()
	resp, ok := <-required
	if !ok || !errors.Is(resp.Err(), rpctypes.ErrNoLeader) {
		t.Fatalf("require-leader watch got %+v (open %v, err %v), want etcd's no-leader error", resp, ok, resp.Err())
	}
	// Without its event log the replica's cache no longer advances: reads go to etcd.
	before := st.Gateway.ReadStats()
	if _, err := gw.Get(ctx, "leader/a", clientv3.WithSerializable()); err != nil {
		t.Fatal(err)
	}
	if after := st.Gateway.ReadStats(); after.PassedThrough != before.PassedThrough+1 {
		t.Errorf("serializable read without the event log: read stats went from %+v to %+v, want it passed through", before, after)
	}
	for { // a new require-leader watch is refused (the client retries, so read its error)
		resp, ok := <-gw.Watch(clientv3.WithRequireLeader(ctx), "leader/c")
		if ok && errors.Is(resp.Err(), rpctypes.ErrNoLeader) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("new require-leader watch: %+v %v", resp, resp.Err())
		}
	}
	select {
	case resp := <-plain:
		t.Fatalf("plain watch got %+v (err %v), want it left open", resp, resp.Err())
	default:
	}
}
