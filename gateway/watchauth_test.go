package gateway_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"

	"github.com/watchgate/watchgate/ingest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// TestWatchPermissions runs a replica in front of etcd with auth on: a watch is allowed or
// refused exactly as etcd allows or refuses it (same cancel reason), for a user allowed one
// prefix, one watching outside it, a caller without credentials and one with a made-up token,
// and an allowed watch receives its events.
func TestWatchPermissions(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	admin := p.member
	testenv.EnableAuth(ctx, t, admin, testenv.Reader{Name: "alice", Password: "alice's secret", Key: "a/", End: "a0"})
	root, err := clientv3.New(clientv3.Config{Endpoints: admin.Endpoints(), Username: "root", Password: testenv.RootPassword,
		DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	ing, err := ingest.New(ingest.Options{Member: root, Log: p.log})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = ing.Run(runCtx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	_, cli := p.runGateway(t, ctx, nil)
	auth, err := admin.Authenticate(ctx, "alice", "alice's secret")
	if err != nil {
		t.Fatal(err)
	}
	as := func(token string) context.Context {
		if token == "" {
			return ctx
		}
		return metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, token)
	}

	// create opens a stream on conn as the caller of c and returns its first response, as a
	// client compares it: created, canceled, the reason, and whether an id was assigned.
	type outcome struct {
		Created, Canceled bool
		Reason            string
		Assigned          bool
	}
	create := func(c context.Context, kv pb.WatchClient, req *pb.WatchCreateRequest) (outcome, pb.Watch_WatchClient) {
		t.Helper()
		ws, err := kv.Watch(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: req}}); err != nil {
			t.Fatal(err)
		}
		resp, err := ws.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return outcome{resp.Created, resp.Canceled, resp.CancelReason, resp.WatchId != clientv3.InvalidWatchID}, ws
	}
	// Plain gRPC connections: clientv3's would retry a refused token.
	etcd := pb.NewWatchClient(rawConnFrom(t, admin.Endpoints()[0], "127.0.0.1"))
	gw := pb.NewWatchClient(rawConnFrom(t, cli.Endpoints()[0], "127.0.0.1"))
	for _, tc := range []struct {
		name  string
		token string
		req   *pb.WatchCreateRequest
	}{
		{"allowed key", auth.Token, &pb.WatchCreateRequest{Key: []byte("a/x")}},
		{"allowed prefix", auth.Token, &pb.WatchCreateRequest{Key: []byte("a/"), RangeEnd: []byte("a0")}},
		{"allowed, from a past revision", auth.Token, &pb.WatchCreateRequest{Key: []byte("a/x"), StartRevision: 1}},
		{"outside the permission", auth.Token, &pb.WatchCreateRequest{Key: []byte("b/"), RangeEnd: []byte("b0")}},
		{"from-key past the permission", auth.Token, &pb.WatchCreateRequest{Key: []byte("a/"), RangeEnd: []byte{0}}},
		{"empty range outside the permission", auth.Token, &pb.WatchCreateRequest{Key: []byte("z"), RangeEnd: []byte("a")}},
		{"no credentials", "", &pb.WatchCreateRequest{Key: []byte("a/x")}},
		// A simple token names the raft index it was issued at, and etcd waits for that
		// index before looking it up: a made-up one names an index etcd has passed.
		{"made-up token", "QkXxRMhiubWPnmrZ.1", &pb.WatchCreateRequest{Key: []byte("a/x")}},
	} {
		want, _ := create(as(tc.token), etcd, tc.req)
		got, _ := create(as(tc.token), gw, tc.req)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: (-etcd +gateway):\n%s", tc.name, diff)
		}
	}

	// An allowed watch from now receives the writes after it.
	got, ws := create(as(auth.Token), gw, &pb.WatchCreateRequest{Key: []byte("a/"), RangeEnd: []byte("a0")})
	if !got.Created || got.Canceled {
		t.Fatalf("allowed watch: %+v", got)
	}
	put, err := root.Put(ctx, "a/y", fmt.Sprint(time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ws.Recv()
	if err != nil || len(resp.Events) != 1 || resp.Events[0].Kv.ModRevision != put.Header.Revision {
		t.Fatalf("allowed watch got %v, %v; want the put at %d", resp, err, put.Header.Revision)
	}
}
