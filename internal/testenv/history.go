package testenv

import (
	"context"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// History reads etcd's own watch history of the whole keyspace from revision from up to and
// including revision to, as one slice of events per revision.
func History(ctx context.Context, t testing.TB, c *clientv3.Client, from, to int64) [][]*mvccpb.Event {
	t.Helper()
	if to < from {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out [][]*mvccpb.Event
	wch := c.Watch(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(from), clientv3.WithPrevKV())
	for resp := range wch {
		if err := resp.Err(); err != nil {
			t.Fatalf("history watch from %d: %v", from, err)
		}
		for _, ev := range resp.Events {
			rev := ev.Kv.ModRevision
			if rev > to {
				// A later write may commit after the caller read to (a request its client gave
				// up on can still be applied); the history up to to is whole once to was seen.
				if n := len(out); n > 0 && out[n-1][0].Kv.ModRevision == to {
					return out
				}
				t.Fatalf("history watch passed revision %d without delivering it", to)
			}
			if n := len(out); n > 0 && out[n-1][0].Kv.ModRevision == rev {
				out[n-1] = append(out[n-1], ev)
			} else {
				out = append(out, []*mvccpb.Event{ev})
			}
		}
		if n := len(out); n > 0 && out[n-1][0].Kv.ModRevision == to {
			return out
		}
	}
	t.Fatalf("history watch from %d ended before revision %d: %v", from, to, ctx.Err())
	return nil
}

// Rev returns etcd's current revision (a linearizable read).
func Rev(ctx context.Context, t testing.TB, c *clientv3.Client) int64 {
	t.Helper()
	r, err := c.Get(ctx, "\x00", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return r.Header.Revision
}
