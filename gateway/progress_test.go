package gateway_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc"

	"github.com/watchgate/watchgate/internal/stack"
	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// Progress notifications, checked against etcd: each test body runs on a watch opened directly
// on etcd and on the same watch opened through the gateway, and both must answer alike.

// progressTargets starts a stack whose gateway sends progress notifications every interval,
// and returns a writer on etcd plus a client for each target.
func progressTargets(t *testing.T, interval time.Duration) (writer *clientv3.Client, targets map[string]*clientv3.Client) {
	t.Helper()
	// etcd's interval is a process-wide setting of its watch server; the embedded etcd of the
	// stack serves its watches with it.
	old := v3rpc.GetProgressReportInterval()
	v3rpc.SetProgressReportInterval(interval)
	t.Cleanup(func() { v3rpc.SetProgressReportInterval(old) })
	st := stacktest.Start(t, func(o *stack.Options) { o.Gateway.WatchProgressNotifyInterval = interval })
	writer = testenv.Client(t, st.Etcd.Endpoint)
	return writer, map[string]*clientv3.Client{
		"etcd":    testenv.Client(t, st.Etcd.Endpoint),
		"gateway": testenv.Client(t, st.ClientURL),
	}
}

// next returns the next response of wch, failing the test if the watch ends or errs.
func next(ctx context.Context, t *testing.T, wch clientv3.WatchChan) clientv3.WatchResponse {
	t.Helper()
	select {
	case resp, ok := <-wch:
		if !ok {
			t.Fatal("watch closed")
		}
		if err := resp.Err(); err != nil {
			t.Fatalf("watch error: %v", err)
		}
		return resp
	case <-ctx.Done():
		t.Fatalf("no response: %v", ctx.Err())
	}
	panic("unreachable")
}

// TestRequestProgress: on a stream whose watchers are all synced, a progress request is answered
// with watch id -1 and the current revision, after every event up to it.
func TestRequestProgress(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	writer, targets := progressTargets(t, 10*time.Minute)
	for name, c := range targets {
		t.Run(name, func(t *testing.T) {
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			key := "progress/" + name
			a := c.Watch(wctx, key, clientv3.WithCreatedNotify())
			b := c.Watch(wctx, key+"/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
			next(ctx, t, a)
			next(ctx, t, b)
			put, err := writer.Put(ctx, key, "v")
			if err != nil {
				t.Fatal(err)
			}
			if resp := next(ctx, t, a); len(resp.Events) != 1 {
				t.Fatalf("got %+v, want the put", resp)
			}
			// A write the watchers do not see still moves the revision.
			other, err := writer.Put(ctx, "progress-other", "v")
			if err != nil {
				t.Fatal(err)
			}
			want := other.Header.Revision
			for {
				if err := c.RequestProgress(wctx); err != nil {
					t.Fatal(err)
				}
				// The notification is broadcast by the client to every watcher of the stream.
				resp := next(ctx, t, a)
				if !resp.IsProgressNotify() {
					t.Fatalf("got %+v, want a progress notification", resp)
				}
				if resp.Header.Revision < put.Header.Revision || resp.Header.Revision > want {
					t.Fatalf("progress at revision %d, want between %d and %d", resp.Header.Revision, put.Header.Revision, want)
				}
				if got := next(ctx, t, b); !got.IsProgressNotify() || got.Header.Revision != resp.Header.Revision {
					t.Fatalf("second watcher got %+v, want the same notification", got)
				}
				if resp.Header.Revision == want {
					break // the gateway may answer before it has applied the last write; ask again
				}
			}
		})
	}
}

// TestRequestProgressWaitsForFutureWatcher: a watcher whose start revision is still in the
// future is not synced, so etcd ignores the progress request; its first response is its event.
func TestRequestProgressWaitsForFutureWatcher(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	writer, targets := progressTargets(t, 10*time.Minute)
	for name, c := range targets {
		t.Run(name, func(t *testing.T) {
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			key := "future/" + name
			now := testenv.Rev(ctx, t, writer)
			wch := c.Watch(wctx, key, clientv3.WithRev(now+3), clientv3.WithCreatedNotify())
			next(ctx, t, wch)
			if err := c.RequestProgress(wctx); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if _, err := writer.Put(ctx, key, "v"); err != nil {
					t.Fatal(err)
				}
			}
			resp := next(ctx, t, wch)
			if resp.IsProgressNotify() || len(resp.Events) == 0 || resp.Events[0].Kv.ModRevision != now+3 {
				t.Fatalf("first response %+v, want the event at revision %d", resp, now+3)
			}
		})
	}
}

// TestProgressNotify: a watcher created with progress_notify that receives no events gets
// periodic notifications carrying the current revision; one that does is not notified on top.
func TestProgressNotify(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	writer, targets := progressTargets(t, 200*time.Millisecond)
	for name, c := range targets {
		t.Run(name, func(t *testing.T) {
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			key := "notify/" + name
			wch := c.Watch(wctx, key, clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
			next(ctx, t, wch)
			put, err := writer.Put(ctx, key, "v")
			if err != nil {
				t.Fatal(err)
			}
			if resp := next(ctx, t, wch); len(resp.Events) != 1 {
				t.Fatalf("got %+v, want the put", resp)
			}
			// Nothing more is written to the key: what follows are notifications, each at a
			// revision at least the put's.
			for range 2 {
				resp := next(ctx, t, wch)
				if !resp.IsProgressNotify() {
					t.Fatalf("got %+v, want a progress notification", resp)
				}
				if resp.Header.Revision < put.Header.Revision {
					t.Fatalf("progress at revision %d, before the put at %d", resp.Header.Revision, put.Header.Revision)
				}
			}
		})
	}
}
