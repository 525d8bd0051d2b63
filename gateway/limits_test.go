package gateway_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/watchgate/watchgate/internal/stack"
	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// TestWatchLimits sets each per-replica limit low and checks that the stream or watcher past
// it is refused with a clear error, that nothing below it is, and that closing watchers frees
// their place.
func TestWatchLimits(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	st := stacktest.Start(t, func(o *stack.Options) {
		o.Gateway.MaxWatchersPerStream = 2
		o.Gateway.MaxWatchers = 3
		o.Gateway.MaxWatchStreams = 2
	})
	conn := testenv.Client(t, st.ClientURL).ActiveConnection()
	open := func(ctx context.Context) pb.Watch_WatchClient {
		t.Helper()
		ws, err := pb.NewWatchClient(conn).Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ws
	}
	create := func(ws pb.Watch_WatchClient, key string) *pb.WatchResponse {
		t.Helper()
		if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
			CreateRequest: &pb.WatchCreateRequest{Key: []byte(key)}}}); err != nil {
			t.Fatal(err)
		}
		resp, err := ws.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	wantCreated := func(resp *pb.WatchResponse) {
		t.Helper()
		if !resp.Created || resp.Canceled {
			t.Fatalf("got %+v, want created", resp)
		}
	}
	wantRefused := func(resp *pb.WatchResponse, reason string) {
		t.Helper()
		if !resp.Created || !resp.Canceled || resp.WatchId != clientv3.InvalidWatchID || !strings.Contains(resp.CancelReason, reason) {
			t.Fatalf("got %+v, want refused with %q", resp, reason)
		}
	}

	ctx1, close1 := context.WithCancel(ctx)
	s1 := open(ctx1)
	wantCreated(create(s1, "a"))
	first := create(s1, "b")
	wantCreated(first)
	wantRefused(create(s1, "c"), "too many watchers on this stream (limit 2)")

	s2 := open(ctx)
	wantCreated(create(s2, "d"))
	wantRefused(create(s2, "e"), "too many watchers on this replica (limit 3)")

	// A third stream is over the stream limit.
	s3, err := pb.NewWatchClient(conn).Watch(ctx)
	if err == nil {
		_, err = s3.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "too many watch streams on this replica (limit 2)") {
		t.Fatalf("third stream: %v, want ResourceExhausted", err)
	}

	// Canceling a watcher frees its place on the replica.
	if err := s1.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{
		CancelRequest: &pb.WatchCancelRequest{WatchId: first.WatchId}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := s1.Recv(); err != nil || !resp.Canceled {
		t.Fatalf("cancel: %+v %v", resp, err)
	}
	wantCreated(create(s2, "e"))

	// Closing a stream frees its place and its watchers' (once the replica sees it closed).
	close1()
	for {
		s3, err := pb.NewWatchClient(conn).Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s3.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
			CreateRequest: &pb.WatchCreateRequest{Key: []byte("f")}}}); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err) // a refused stream's error comes from Recv
		}
		resp, err := s3.Recv()
		if status.Code(err) == codes.ResourceExhausted {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		wantCreated(resp)
		break
	}
}
