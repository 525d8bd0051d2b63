package gateway_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// watchCase is one watch, opened the same way on etcd and on the gateway.
type watchCase struct {
	name string
	key  string
	opts []clientv3.OpOption
	// untilPut: the watcher filters deletes, so it ends at the sentinel put, not the delete.
	untilPut bool
}

// received is what one watcher saw: every event, and for each response the revisions in it
// (to check that a revision is never split across responses).
type received struct {
	events    []*mvccpb.Event
	responses [][]int64
}

// collect reads wch until it has seen an event at revision >= until.
func collect(ctx context.Context, t *testing.T, wch clientv3.WatchChan, until int64) received {
	t.Helper()
	var got received
	for {
		select {
		case resp, ok := <-wch:
			if !ok {
				t.Fatalf("watch closed early: %v", ctx.Err())
			}
			if err := resp.Err(); err != nil {
				t.Fatalf("watch error: %v", err)
			}
			var revs []int64
			for _, ev := range resp.Events {
				if n := len(revs); n == 0 || revs[n-1] != ev.Kv.ModRevision {
					revs = append(revs, ev.Kv.ModRevision)
				}
			}
			got.events = append(got.events, resp.Events...)
			got.responses = append(got.responses, revs)
			if n := len(resp.Events); n > 0 && resp.Events[n-1].Kv.ModRevision >= until {
				return got
			}
		case <-ctx.Done():
			t.Fatalf("watch did not reach revision %d: %v", until, ctx.Err())
		}
	}
}

// writeHistory makes a varied history: puts, overwrites, deletes, range deletes, multi-key
// txns and a lease revocation, across the keys the watch cases look at.
func writeHistory(ctx context.Context, t *testing.T, c *clientv3.Client, round int) {
	t.Helper()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		must(c.Put(ctx, "a", fmt.Sprintf("a-%d-%d", round, i)))
		must(c.Put(ctx, fmt.Sprintf("p/%d", i), fmt.Sprint(round)))
		must(c.Put(ctx, fmt.Sprintf("r/%c", 'a'+i*3), fmt.Sprint(round)))
		must(c.Put(ctx, fmt.Sprintf("z%d", i), fmt.Sprint(round)))
	}
	must(c.Delete(ctx, "a"))
	must(c.Txn(ctx).Then(clientv3.OpPut("a", "txn"), clientv3.OpPut("p/0", "txn"),
		clientv3.OpDelete("r/d"), clientv3.OpPut("zz", "txn")).Commit())
	must(c.Delete(ctx, "p/", clientv3.WithPrefix()))
	lease, err := c.Grant(ctx, 60)
	must(lease, err)
	must(c.Put(ctx, "p/leased", "v", clientv3.WithLease(lease.ID)))
	must(c.Put(ctx, "r/leased", "v", clientv3.WithLease(lease.ID)))
	must(c.Revoke(ctx, lease.ID))
}

// TestWatchMatchesEtcd opens the same watchers directly on etcd and through the gateway, from
// now and from old revisions, and checks both see exactly the same events, with the gateway
// never splitting a revision across responses.
func TestWatchMatchesEtcd(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	st := stacktest.Start(t, nil)
	direct := testenv.Client(t, st.Etcd.Endpoint)
	gw := testenv.Client(t, st.ClientURL)

	writeHistory(ctx, t, direct, 1)
	mid := testenv.Rev(ctx, t, direct)
	writeHistory(ctx, t, direct, 2)

	cases := []watchCase{
		{name: "key", key: "a"},
		{name: "key prevKV", key: "a", opts: []clientv3.OpOption{clientv3.WithPrevKV()}},
		{name: "prefix", key: "p/", opts: []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV()}},
		{name: "range", key: "r/b", opts: []clientv3.OpOption{clientv3.WithRange("r/m")}},
		{name: "from key", key: "z", opts: []clientv3.OpOption{clientv3.WithFromKey(), clientv3.WithPrevKV()}},
		{name: "all keys", key: "", opts: []clientv3.OpOption{clientv3.WithPrefix()}},
		{name: "no put", key: "p/", opts: []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithFilterPut()}},
		{name: "no delete", key: "r/", untilPut: true, opts: []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithFilterDelete()}},
	}
	starts := []struct {
		name string
		rev  int64
	}{{"now", 0}, {"rev 1", 1}, {"rev 2", 2}, {"mid", mid}}

	type opened struct {
		name     string
		etcd, gw clientv3.WatchChan
		untilPut bool
	}
	var all []opened
	for _, c := range cases {
		for _, s := range starts {
			opts := append([]clientv3.OpOption{clientv3.WithRev(s.rev), clientv3.WithCreatedNotify()}, c.opts...)
			all = append(all, opened{
				name:     c.name + " from " + s.name,
				etcd:     direct.Watch(ctx, c.key, opts...),
				gw:       gw.Watch(ctx, c.key, opts...),
				untilPut: c.untilPut,
			})
		}
	}
	// Every watcher, "from now" ones included, exists before more history is written.
	for _, o := range all {
		for _, wch := range []clientv3.WatchChan{o.etcd, o.gw} {
			if resp := <-wch; !resp.Created || resp.Err() != nil {
				t.Fatalf("%s: first response %+v, err %v", o.name, resp, resp.Err())
			}
		}
	}
	writeHistory(ctx, t, direct, 3)
	sentinels := []string{"a", "p/sentinel", "r/c", "zzz"}
	var puts, dels []clientv3.Op
	for _, k := range sentinels {
		puts = append(puts, clientv3.OpPut(k, "end"))
		dels = append(dels, clientv3.OpDelete(k))
	}
	tp, err := direct.Txn(ctx).Then(puts...).Commit()
	if err != nil {
		t.Fatal(err)
	}
	td, err := direct.Txn(ctx).Then(dels...).Commit()
	if err != nil {
		t.Fatal(err)
	}

	for _, o := range all {
		t.Run(o.name, func(t *testing.T) {
			until := td.Header.Revision
			if o.untilPut {
				until = tp.Header.Revision
			}
			want := collect(ctx, t, o.etcd, until)
			got := collect(ctx, t, o.gw, until)
			if diff := cmp.Diff(want.events, got.events, protocmp.Transform()); diff != "" {
				t.Fatalf("events differ (-etcd +gateway):\n%s", diff)
			}
			seen := map[int64]bool{}
			for _, revs := range got.responses {
				for _, r := range revs {
					if seen[r] {
						t.Fatalf("revision %d split across responses", r)
					}
					seen[r] = true
				}
			}
		})
	}
}
