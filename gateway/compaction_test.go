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

// TestMemberCompactionMatchesEtcd compacts etcd in the middle of a key's history. A watch from
// below the compact revision must be answered as etcd answers it (canceled, with the compact
// revision) even though the event log still holds those revisions, and a watch from the compact
// revision on must get the same events from both.
func TestMemberCompactionMatchesEtcd(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	st := stacktest.Start(t, nil)
	direct := testenv.Client(t, st.Etcd.Endpoint)
	var revs []int64
	for i := range 20 {
		r, err := direct.Put(ctx, "compact/k", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, r.Header.Revision)
	}
	compactAt := revs[10]
	if _, err := direct.Compact(ctx, compactAt); err != nil {
		t.Fatal(err)
	}
	targets := map[string]*clientv3.Client{"etcd": direct, "gateway": testenv.Client(t, st.ClientURL)}

	for _, from := range []int64{1, compactAt - 1} {
		for name, c := range targets {
			wctx, cancel := context.WithCancel(ctx)
			resp := <-c.Watch(wctx, "compact/k", clientv3.WithRev(from))
			cancel()
			if resp.CompactRevision != compactAt || !resp.Canceled {
				t.Errorf("%s from %d: got %+v (err %v), want canceled with compact revision %d", name, from, resp, resp.Err(), compactAt)
			}
		}
	}
	got := map[string][]*mvccpb.Event{}
	for name, c := range targets {
		wctx, cancel := context.WithCancel(ctx)
		wch := c.Watch(wctx, "compact/k", clientv3.WithRev(compactAt), clientv3.WithPrevKV())
		for len(got[name]) < 10 {
			resp := <-wch
			if err := resp.Err(); err != nil {
				t.Fatalf("%s from %d: %v", name, compactAt, err)
			}
			got[name] = append(got[name], resp.Events...)
		}
		cancel()
	}
	if diff := cmp.Diff(got["etcd"], got["gateway"], protocmp.Transform()); diff != "" {
		t.Errorf("events from the compact revision differ (-etcd +gateway):\n%s", diff)
	}
}
