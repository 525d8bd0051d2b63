package gateway_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// TestFragmentMatchesEtcd deletes a prefix holding 3 MB in one revision, watched with prev_kv:
// a 3 MB response, over etcd's 2 MB limit (--max-request-bytes plus gRPC overhead). A watcher
// that asked for fragments must get the same series of fragments from the gateway as from
// etcd (same events in each, same Fragment flags); one that did not gets one response from
// both. The responses are read with the raw gRPC stream, since clientv3 reassembles fragments.
func TestFragmentMatchesEtcd(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	st := stacktest.Start(t, nil)
	writer := testenv.Client(t, st.Etcd.Endpoint)
	value := strings.Repeat("v", 1000)
	for i := range 3000 {
		if _, err := writer.Put(ctx, fmt.Sprintf("frag/%04d", i), value); err != nil {
			t.Fatal(err)
		}
	}

	type shape struct {
		events   int
		fragment bool
	}
	targets := map[string]string{"etcd": st.Etcd.Endpoint, "gateway": st.ClientURL}
	streams := map[string]map[bool]pb.Watch_WatchClient{}
	for name, ep := range targets {
		conn := testenv.Client(t, ep).ActiveConnection()
		streams[name] = map[bool]pb.Watch_WatchClient{}
		for _, frag := range []bool{true, false} {
			ws, err := pb.NewWatchClient(conn).Watch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
				Key: []byte("frag/"), RangeEnd: []byte("frag0"), PrevKv: true, Fragment: frag}}}); err != nil {
				t.Fatal(err)
			}
			if resp, err := ws.Recv(); err != nil || !resp.Created {
				t.Fatalf("%s: create: %v %v", name, resp, err)
			}
			streams[name][frag] = ws
		}
	}
	del, err := writer.Delete(ctx, "frag/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if del.Deleted != 3000 {
		t.Fatalf("deleted %d", del.Deleted)
	}

	got := map[string]map[bool][]shape{}
	for name := range targets {
		got[name] = map[bool][]shape{}
		for frag, ws := range streams[name] {
			for n := 0; n < 3000; {
				resp, err := ws.Recv()
				if err != nil {
					t.Fatalf("%s fragment=%v: %v", name, frag, err)
				}
				for _, ev := range resp.Events {
					if ev.PrevKv == nil || string(ev.PrevKv.Value) != value || ev.Kv.ModRevision != del.Header.Revision {
						t.Fatalf("%s fragment=%v: bad event %v", name, frag, ev.Kv)
					}
				}
				n += len(resp.Events)
				got[name][frag] = append(got[name][frag], shape{len(resp.Events), resp.Fragment})
			}
		}
	}
	t.Logf("etcd: %v", got["etcd"])
	if len(got["etcd"][true]) < 2 || len(got["etcd"][false]) != 1 {
		t.Fatalf("etcd did not fragment as expected: %v", got["etcd"])
	}
	for _, frag := range []bool{true, false} {
		if fmt.Sprint(got["etcd"][frag]) != fmt.Sprint(got["gateway"][frag]) {
			t.Errorf("fragment=%v: etcd sent %v, gateway %v", frag, got["etcd"][frag], got["gateway"][frag])
		}
	}
}
