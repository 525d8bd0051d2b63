package gateway_test

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// The conformance suite: each case drives a raw etcd watch stream (the protocol itself, not
// clientv3's view of it) on etcd and on the gateway at the same time, with the same requests
// and the same writes, and requires the same responses from both: events, revisions, prev_kv,
// created and canceled flags, watch ids, compact revisions, cancel reasons. Only the header's
// member id and raft term are ignored.

// rawStep sends a request on both streams (if any), then writes through etcd (if any), then
// reads n responses from each stream.
type rawStep struct {
	send  *pb.WatchRequest
	write func(ctx context.Context, t *testing.T, c *clientv3.Client)
	read  int
}

func create(cr *pb.WatchCreateRequest) *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}}
}

func cancelReq(id int64) *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}}
}

func progressReq() *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}
}

func put(key, val string, opts ...clientv3.OpOption) func(context.Context, *testing.T, *clientv3.Client) {
	return func(ctx context.Context, t *testing.T, c *clientv3.Client) {
		t.Helper()
		if _, err := c.Put(ctx, key, val, opts...); err != nil {
			t.Fatal(err)
		}
	}
}

func del(key string, opts ...clientv3.OpOption) func(context.Context, *testing.T, *clientv3.Client) {
	return func(ctx context.Context, t *testing.T, c *clientv3.Client) {
		t.Helper()
		if _, err := c.Delete(ctx, key, opts...); err != nil {
			t.Fatal(err)
		}
	}
}

func txn(cmps []clientv3.Cmp, then, els []clientv3.Op) func(context.Context, *testing.T, *clientv3.Client) {
	return func(ctx context.Context, t *testing.T, c *clientv3.Client) {
		t.Helper()
		if _, err := c.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

// normalized drops what legitimately differs between two servers of one cluster.
func normalized(r *pb.WatchResponse) *pb.WatchResponse {
	r = proto.Clone(r).(*pb.WatchResponse)
	if r.Header != nil {
		r.Header.MemberId, r.Header.RaftTerm = 0, 0
	}
	return r
}

// tally counts the events of rs per watch id, and the responses without events.
func tally(rs []*pb.WatchResponse) (events map[int64]int, control int) {
	events = map[int64]int{}
	for _, r := range rs {
		if len(r.Events) == 0 {
			control++
			continue
		}
		events[r.WatchId] += len(r.Events)
	}
	return events, control
}

// canonical orders rs by watch id (keeping each watcher's own order) and merges each watcher's
// consecutive event responses into one, with the last one's header.
func canonical(rs []*pb.WatchResponse) []*pb.WatchResponse {
	rs = slices.Clone(rs)
	slices.SortStableFunc(rs, func(a, b *pb.WatchResponse) int { return cmp.Compare(a.WatchId, b.WatchId) })
	var out []*pb.WatchResponse
	for _, r := range rs {
		if n := len(out); n > 0 && len(r.Events) > 0 && len(out[n-1].Events) > 0 && out[n-1].WatchId == r.WatchId &&
			!r.Canceled && !r.Created && !out[n-1].Canceled && !out[n-1].Created {
			merged := proto.Clone(r).(*pb.WatchResponse)
			merged.Events = append(slices.Clone(out[n-1].Events), r.Events...)
			out[n-1] = merged
			continue
		}
		out = append(out, r)
	}
	return out
}

func TestConformance(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	st := stacktest.Start(t, nil)
	direct := testenv.Client(t, st.Etcd.Endpoint)
	gw := testenv.Client(t, st.ClientURL)
	rev := func() int64 { return testenv.Rev(ctx, t, direct) }

	// Kubernetes' four Txn shapes (create, update, delete, and an update that loses its
	// compare), on key k.
	k8sCreate := func(k string) func(context.Context, *testing.T, *clientv3.Client) {
		return txn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", 0)},
			[]clientv3.Op{clientv3.OpPut(k, "created")}, []clientv3.Op{clientv3.OpGet(k)})
	}
	// k8sGuarded applies op to k if k is still at the revision just read, as Kubernetes' update
	// and delete do.
	k8sGuarded := func(k string, op clientv3.Op) func(context.Context, *testing.T, *clientv3.Client) {
		return func(ctx context.Context, t *testing.T, c *clientv3.Client) {
			t.Helper()
			cur, err := c.Get(ctx, k)
			if err != nil || len(cur.Kvs) != 1 {
				t.Fatalf("get %s: %v %v", k, cur, err)
			}
			txn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", cur.Kvs[0].ModRevision)},
				[]clientv3.Op{op}, []clientv3.Op{clientv3.OpGet(k)})(ctx, t, c)
		}
	}
	k8sUpdate := func(k string) func(context.Context, *testing.T, *clientv3.Client) {
		return k8sGuarded(k, clientv3.OpPut(k, "updated"))
	}
	k8sDelete := func(k string) func(context.Context, *testing.T, *clientv3.Client) {
		return k8sGuarded(k, clientv3.OpDelete(k))
	}
	k8sStaleUpdate := func(k string) func(context.Context, *testing.T, *clientv3.Client) {
		return txn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", 1)},
			[]clientv3.Op{clientv3.OpPut(k, "stale")}, []clientv3.Op{clientv3.OpGet(k)})
	}

	cases := []struct {
		name  string
		steps func(base string) []rawStep
		// pastCreated: the Created response's header revision of a watch from a past revision
		// may be the replica's applied revision rather than etcd's current one (see
		// docs/guarantees.md), so it is only required to be set.
		pastCreated bool
	}{
		{name: "put then delete, key", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b)}), read: 1},
				{write: put(b, "1"), read: 1}, {write: del(b), read: 1}}
		}},
		{name: "prev_kv on create, update and delete", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), PrevKv: true}), read: 1},
				{write: put(b, "1"), read: 1}, {write: put(b, "2"), read: 1}, {write: del(b), read: 1}}
		}},
		{name: "prefix", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b + "/"), RangeEnd: []byte(b + "0")}), read: 1},
				{write: put(b+"/x", "1"), read: 1}, {write: put(b+"0", "outside")}, {write: put(b+"/y", "2"), read: 1}}
		}},
		{name: "from key", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b + "/m"), RangeEnd: []byte{0}}), read: 1},
				{write: put(b+"/a", "before")}, {write: put(b+"/z", "after"), read: 1}}
		}},
		{name: "range end exclusive", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b + "/b"), RangeEnd: []byte(b + "/d")}), read: 1},
				{write: put(b+"/d", "end")}, {write: put(b+"/b", "start"), read: 1}}
		}},
		{name: "noput filter", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT}}), read: 1},
				{write: put(b, "1")}, {write: del(b), read: 1}}
		}},
		{name: "nodelete filter", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE}}), read: 1},
				{write: put(b, "1"), read: 1}, {write: del(b)}, {write: put(b, "2"), read: 1}}
		}},
		{name: "client-chosen watch id", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), WatchId: 7}), read: 1}, {write: put(b, "1"), read: 1}}
		}},
		{name: "duplicate watch id", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), WatchId: 3}), read: 1},
				{send: create(&pb.WatchCreateRequest{Key: []byte(b + "x"), WatchId: 3}), read: 1}}
		}},
		{name: "automatic ids skip taken ones", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), WatchId: 0}), read: 1},
				{send: create(&pb.WatchCreateRequest{Key: []byte(b), WatchId: 1}), read: 1},
				{send: create(&pb.WatchCreateRequest{Key: []byte(b)}), read: 1}}
		}},
		{name: "cancel", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b)}), read: 1},
				{send: cancelReq(0), read: 1}, {write: put(b, "after cancel")},
				{send: create(&pb.WatchCreateRequest{Key: []byte(b + "/next")}), read: 1}}
		}},
		{name: "cancel of an unknown id is not answered", steps: func(b string) []rawStep {
			return []rawStep{{send: cancelReq(42)}, {send: create(&pb.WatchCreateRequest{Key: []byte(b)}), read: 1}}
		}},
		{name: "two watchers on one stream", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b)}), read: 1},
				{send: create(&pb.WatchCreateRequest{Key: []byte(b), PrevKv: true}), read: 1},
				{write: put(b, "1"), read: 2}, {write: put(b, "2"), read: 2}}
		}},
		{name: "empty range", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b + "/z"), RangeEnd: []byte(b + "/a")}), read: 1}}
		}},
		{name: "negative start revision", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), StartRevision: -1}), read: 1}}
		}},
		{name: "future start revision waits", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), StartRevision: rev() + 3}), read: 1},
				{write: put(b, "1")}, {write: put(b, "2")}, {write: put(b, "3"), read: 1}}
		}},
		{name: "past start revision", steps: func(b string) []rawStep {
			put(b, "old-1")(ctx, t, direct)
			from := rev()
			put(b, "old-2")(ctx, t, direct)
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), StartRevision: from, PrevKv: true}), read: 2}}
		}, pastCreated: true},
		{name: "progress request on a synced stream", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b)}), read: 1},
				{write: put(b, "1"), read: 1}, {send: progressReq(), read: 1}}
		}},
		{name: "progress request with no watchers is not answered", steps: func(b string) []rawStep {
			return []rawStep{{send: progressReq()}, {send: create(&pb.WatchCreateRequest{Key: []byte(b)}), read: 1}}
		}},
		{name: "kubernetes create", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), PrevKv: true}), read: 1},
				{write: k8sCreate(b), read: 1}}
		}},
		{name: "kubernetes update", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), PrevKv: true}), read: 1},
				{write: k8sCreate(b), read: 1}, {write: k8sUpdate(b), read: 1}}
		}},
		{name: "kubernetes delete", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), PrevKv: true}), read: 1},
				{write: k8sCreate(b), read: 1}, {write: k8sDelete(b), read: 1}}
		}},
		{name: "kubernetes update that loses its compare", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b), PrevKv: true}), read: 1},
				{write: k8sCreate(b), read: 1}, {write: k8sStaleUpdate(b)}, {write: k8sUpdate(b), read: 1}}
		}},
		{name: "multi-key txn is one response", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b + "/"), RangeEnd: []byte(b + "0"), PrevKv: true}), read: 1},
				{write: put(b+"/b", "0"), read: 1},
				{write: txn(nil, []clientv3.Op{clientv3.OpPut(b+"/a", "1"), clientv3.OpDelete(b + "/b"), clientv3.OpPut(b+"/c", "3")}, nil), read: 1}}
		}},
		{name: "range delete is one response", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b + "/"), RangeEnd: []byte(b + "0")}), read: 1},
				{write: put(b+"/a", "1"), read: 1}, {write: put(b+"/b", "2"), read: 1}, {write: del(b+"/", clientv3.WithPrefix()), read: 1}}
		}},
		{name: "revoked lease deletes its keys in one response", steps: func(b string) []rawStep {
			var lease clientv3.LeaseID
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte(b + "/"), RangeEnd: []byte(b + "0"), PrevKv: true}), read: 1},
				{write: func(ctx context.Context, t *testing.T, c *clientv3.Client) {
					l, err := c.Grant(ctx, 60)
					if err != nil {
						t.Fatal(err)
					}
					lease = l.ID
					put(b+"/a", "1", clientv3.WithLease(lease))(ctx, t, c)
					put(b+"/b", "2", clientv3.WithLease(lease))(ctx, t, c)
				}, read: 2},
				{write: func(ctx context.Context, t *testing.T, c *clientv3.Client) {
					if _, err := c.Revoke(ctx, lease); err != nil {
						t.Fatal(err)
					}
				}, read: 1}}
		}},
		{name: "all keys", steps: func(b string) []rawStep {
			return []rawStep{{send: create(&pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: rev() + 1}), read: 1},
				{write: put(b, "1"), read: 1}}
		}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := fmt.Sprintf("conf/%02d", i)
			steps := c.steps(base)
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			streams := map[string]pb.Watch_WatchClient{}
			for name, cl := range map[string]*clientv3.Client{"etcd": direct, "gateway": gw} {
				ws, err := pb.NewWatchClient(cl.ActiveConnection()).Watch(wctx)
				if err != nil {
					t.Fatal(err)
				}
				streams[name] = ws
			}
			for si, s := range steps {
				if s.send != nil {
					for name, ws := range streams {
						if err := ws.Send(s.send); err != nil {
							t.Fatalf("%s: send: %v", name, err)
						}
					}
				}
				if s.write != nil {
					s.write(ctx, t, direct)
				}
				if s.read == 0 {
					continue
				}
				// etcd's responses set what is read from the gateway: as many control
				// responses, and as many events for each watch id. How events are grouped into
				// responses is not compared (a catching-up watcher may get several revisions in
				// one response, from either server, depending on timing), nor the order of
				// different watchers' responses to one revision (etcd's is a map's order).
				var want []*pb.WatchResponse
				for range s.read {
					resp, err := streams["etcd"].Recv()
					if err != nil {
						t.Fatalf("step %d: etcd: %v", si, err)
					}
					want = append(want, normalized(resp))
				}
				wantEvents, wantControl := tally(want)
				var got []*pb.WatchResponse
				for {
					gotEvents, gotControl := tally(got)
					if gotControl >= wantControl && gocmp.Equal(gotEvents, wantEvents) || gotControl > wantControl {
						break
					}
					resp, err := streams["gateway"].Recv()
					if err != nil {
						t.Fatalf("step %d: gateway: %v", si, err)
					}
					got = append(got, normalized(resp))
				}
				if c.pastCreated {
					for _, rs := range [][]*pb.WatchResponse{want, got} {
						for _, r := range rs {
							if r.Created && r.Header.Revision >= 1 {
								r.Header.Revision = 1 // compared below only as "set"
							}
						}
					}
				}
				if diff := gocmp.Diff(canonical(want), canonical(got), protocmp.Transform()); diff != "" {
					t.Fatalf("step %d differs (-etcd +gateway):\n%s", si, diff)
				}
			}
		})
	}
}

// TestLeaseExpiryMatchesEtcd lets a lease expire (etcd's lessor revokes it on its own) with two
// keys attached: both watchers see one revision deleting both, with prev_kv.
func TestLeaseExpiryMatchesEtcd(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	st := stacktest.Start(t, nil)
	direct := testenv.Client(t, st.Etcd.Endpoint)
	targets := map[string]*clientv3.Client{"etcd": direct, "gateway": testenv.Client(t, st.ClientURL)}
	chans := map[string]clientv3.WatchChan{}
	for name, c := range targets {
		chans[name] = c.Watch(ctx, "expire/", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
		if resp := <-chans[name]; !resp.Created {
			t.Fatalf("%s: %v", name, resp.Err())
		}
	}
	l, err := direct.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"expire/a", "expire/b"} {
		if _, err := direct.Put(ctx, k, "v", clientv3.WithLease(l.ID)); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string][]*mvccpb.Event{}
	for name, wch := range chans {
		for len(got[name]) < 4 { // two puts, then the expiry's two deletes
			resp := <-wch
			if err := resp.Err(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got[name] = append(got[name], resp.Events...)
		}
	}
	if got["etcd"][2].Type != mvccpb.DELETE || got["etcd"][2].Kv.ModRevision != got["etcd"][3].Kv.ModRevision {
		t.Fatalf("etcd did not expire the lease in one revision: %v", got["etcd"])
	}
	if diff := gocmp.Diff(got["etcd"], got["gateway"], protocmp.Transform()); diff != "" {
		t.Errorf("(-etcd +gateway):\n%s", diff)
	}
}

// TestResumeOnAnotherReplica: a watch broken on one replica resumes on another from its last
// revision + 1, and the two halves together are exactly etcd's history.
func TestResumeOnAnotherReplica(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	p.runIngest(t, ctx)
	_, a := p.runGateway(t, ctx, nil)
	_, b := p.runGateway(t, ctx, nil)
	first := testenv.Rev(ctx, t, p.member) + 1
	for i := range 10 {
		if _, err := p.member.Put(ctx, "resume/k", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	actx, cancel := context.WithCancel(ctx)
	var got []*mvccpb.Event
	wch := a.Watch(actx, "resume/", clientv3.WithPrefix(), clientv3.WithRev(first), clientv3.WithPrevKV())
	for len(got) < 5 {
		resp := <-wch
		if err := resp.Err(); err != nil {
			t.Fatal(err)
		}
		got = append(got, resp.Events...)
	}
	cancel() // the connection to replica a breaks here
	for i := 10; i < 20; i++ {
		if _, err := p.member.Put(ctx, "resume/k", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	wch = b.Watch(ctx, "resume/", clientv3.WithPrefix(), clientv3.WithRev(got[len(got)-1].Kv.ModRevision+1), clientv3.WithPrevKV())
	for len(got) < 20 {
		resp := <-wch
		if err := resp.Err(); err != nil {
			t.Fatal(err)
		}
		got = append(got, resp.Events...)
	}
	var want []*mvccpb.Event
	for _, evs := range testenv.History(ctx, t, p.member, first, got[len(got)-1].Kv.ModRevision) {
		want = append(want, evs...)
	}
	if diff := gocmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("(-etcd +replicas a then b):\n%s", diff)
	}
}
