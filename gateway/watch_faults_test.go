package gateway_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/internal/testenv"
)

// TestWatchFromOneAfterIngestKilledMidBurst kills ingest during a burst of 10,000 revisions,
// starts another, and checks a watch from revision 1 through the gateway yields every revision
// exactly once, identical to etcd's own history.
func TestWatchFromOneAfterIngestKilledMidBurst(t *testing.T) {
	const revisions = 10000
	ctx := testenv.Context(t, 3*time.Minute)
	p := newParts(t, ctx)
	_, gw := p.runGateway(t, ctx, nil)
	ing, kill := p.runIngest(t, ctx)

	done := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < revisions && err == nil; i++ {
			if i%10 == 0 {
				_, err = p.member.Txn(ctx).Then(clientv3.OpPut(fmt.Sprintf("t/%d/a", i), "x"),
					clientv3.OpPut(fmt.Sprintf("t/%d/b", i), "y")).Commit()
			} else {
				_, err = p.member.Put(ctx, fmt.Sprintf("k/%d", i%200), fmt.Sprint(i))
			}
		}
		done <- err
	}()
	for ing.Published() < revisions/3 {
		select {
		case err := <-done:
			t.Fatalf("burst ended before the kill: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	kill()
	t.Logf("ingest killed at revision %d", ing.Published())
	p.runIngest(t, ctx)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	last := testenv.Rev(ctx, t, p.member)

	want := testenv.History(ctx, t, p.member, 1, last)
	var got [][]*mvccpb.Event
	for resp := range gw.Watch(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(1), clientv3.WithPrevKV()) {
		if err := resp.Err(); err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.Events {
			if n := len(got); n > 0 && got[n-1][0].Kv.ModRevision == ev.Kv.ModRevision {
				got[n-1] = append(got[n-1], ev)
			} else {
				got = append(got, []*mvccpb.Event{ev})
			}
		}
		if n := len(got); n > 0 && got[n-1][0].Kv.ModRevision >= last {
			break
		}
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Fatalf("gateway history differs from etcd's (-etcd +gateway):\n%s", diff)
	}
}

// TestWatchCompactedByLog checks that a watch starting below the history the event log holds
// is answered as etcd answers a compacted start revision, and that the client can then watch
// from the compact revision it was given. The log skipped the member's compact revision itself
// (ingest was down across the compaction), so a watch from there is compacted too: etcd would
// serve it, but the revision's events are nowhere to be had, and accepting the watch would
// silently skip them.
func TestWatchCompactedByLog(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	srv, gw := p.runGateway(t, ctx, nil)
	_, kill := p.runIngest(t, ctx)
	put := func(k string) int64 {
		r, err := p.member.Put(ctx, k, "v")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	waitApplied := func(rev int64) {
		for srv.Applied() < rev {
			select {
			case <-ctx.Done():
				t.Fatalf("gateway at %d, want %d", srv.Applied(), rev)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	waitApplied(put("a"))
	kill()
	put("b")
	compactAt := put("c")
	if _, err := p.member.Compact(ctx, compactAt); err != nil {
		t.Fatal(err)
	}
	after := put("d")
	p.runIngest(t, ctx)
	waitApplied(after)

	// Below the first revision the log holds: canceled with ErrCompacted, as etcd cancels, and
	// the revision the log starts at (not etcd's compact revision: the log lost that one too).
	for _, from := range []int64{2, compactAt} {
		resp := <-gw.Watch(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(from))
		if !resp.Canceled || resp.CompactRevision != compactAt+1 || resp.Err() != rpctypes.ErrCompacted {
			t.Fatalf("watch from %d: canceled %v compact %d err %v; want canceled at %d with ErrCompacted",
				from, resp.Canceled, resp.CompactRevision, resp.Err(), compactAt+1)
		}
	}
	// From the compact revision it was given: accepted, and it delivers what the log holds.
	resp := <-gw.Watch(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(compactAt+1))
	if resp.Err() != nil || len(resp.Events) != 1 || string(resp.Events[0].Kv.Key) != "d" {
		t.Fatalf("watch from %d: %+v err %v, want the put of d", compactAt+1, resp.Events, resp.Err())
	}
	b, err := p.log.Bounds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(eventlog.Bounds{First: compactAt + 1, Last: after}, b); diff != "" {
		t.Fatalf("log bounds (-want +got):\n%s", diff)
	}
}

// TestWatchBadRequests checks that malformed watch creates get etcd's own answers.
func TestWatchBadRequests(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	_, gw := p.runGateway(t, ctx, nil)
	p.runIngest(t, ctx)
	direct := p.member

	type outcome struct {
		Created, Canceled bool
		CompactRevision   int64
		Reason            string
		Err               string
	}
	first := func(c *clientv3.Client, key string, opts ...clientv3.OpOption) outcome {
		resp := <-c.Watch(ctx, key, append(opts, clientv3.WithCreatedNotify())...)
		o := outcome{Created: resp.Created, Canceled: resp.Canceled, CompactRevision: resp.CompactRevision,
			Reason: resp.CancelReason}
		if err := resp.Err(); err != nil {
			o.Err = err.Error()
		}
		return o
	}
	cases := []struct {
		name string
		key  string
		opts []clientv3.OpOption
	}{
		{name: "negative start revision", key: "a", opts: []clientv3.OpOption{clientv3.WithRev(-5)}},
		{name: "range end before key", key: "m", opts: []clientv3.OpOption{clientv3.WithRange("b")}},
		{name: "range end equals key", key: "m", opts: []clientv3.OpOption{clientv3.WithRange("m")}},
		{name: "empty key", key: ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := first(direct, tc.key, tc.opts...)
			got := first(gw, tc.key, tc.opts...)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("first response differs (-etcd +gateway):\n%s", diff)
			}
		})
	}
}
