package gateway_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// The request fuzzers: arbitrary bytes, decoded as a RangeRequest or a WatchCreateRequest, sent
// raw to etcd and to a gateway replica in front of it, must get the same answer from both. The
// deployment is set up once per target, with a short history (puts, deletes, a multi-key txn, a
// range delete, a key on a lease, a compaction) and no writes afterwards, so every answer is
// deterministic: the same revision, the same keys, the same errors. The history ends at
// revision 15, compacted at 8; the seed corpora in testdata/fuzz name revisions of it.

// fuzzWorld is the deployment every input of a fuzz target is sent to.
type fuzzWorld struct {
	etcd, gw *grpc.ClientConn // raw connections, without clientv3's retries
	rev      int64            // etcd's revision, unchanged while fuzzing
	compact  int64            // etcd's compact revision
}

// fuzzConn is a plain gRPC connection to endpoint that sends and accepts messages of any size,
// so each server's own limits decide.
func fuzzConn(tb testing.TB, endpoint string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(strings.TrimPrefix(endpoint, "http://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// newFuzzWorld starts a stack, writes its history and waits until the replica has applied it.
func newFuzzWorld(tb testing.TB) *fuzzWorld {
	tb.Helper()
	ctx := testenv.Context(tb, time.Minute)
	st := stacktest.Start(tb, nil)
	member := st.Member
	gw := testenv.Client(tb, st.ClientURL)
	lease, err := member.Grant(ctx, 1e6) // outlives any fuzzing run: no expiry writes
	if err != nil {
		tb.Fatal(err)
	}
	do := func(ops ...clientv3.Op) {
		for _, op := range ops {
			if _, err := member.Do(ctx, op); err != nil {
				tb.Fatal(err)
			}
		}
	}
	do(clientv3.OpPut("a", "1"),
		clientv3.OpPut("a/1", "x"),
		clientv3.OpPut("a/2", "y", clientv3.WithLease(lease.ID)),
		clientv3.OpPut("b", "1"),
		clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("b/x", "\x00"), clientv3.OpPut("\x00", ""), clientv3.OpDelete("a/1")}, nil),
		clientv3.OpPut("a", "2"),
		clientv3.OpDelete("b"),
		clientv3.OpPut("\xff", "\xff"),
		clientv3.OpPut("z\xff\xff", "z"))
	// Compacted through the replica, as Kubernetes compacts, two revisions back.
	compact := testenv.Rev(ctx, tb, member) - 2
	if _, err := gw.Compact(ctx, compact); err != nil {
		tb.Fatal(err)
	}
	do(clientv3.OpPut("a", "3"),
		clientv3.OpPut("a/3", "y"),
		clientv3.OpDelete("a/", clientv3.WithPrefix()),
		clientv3.OpPut("c/1", "2"),
		clientv3.OpPut("b", "again"))
	w := &fuzzWorld{etcd: fuzzConn(tb, st.Etcd.Endpoint), gw: fuzzConn(tb, st.ClientURL),
		rev: testenv.Rev(ctx, tb, member), compact: compact}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !st.Gateway.Ready() || st.Gateway.Applied() < w.rev {
		select {
		case <-ctx.Done():
			tb.Fatalf("replica applied revision %d, want %d: %v", st.Gateway.Applied(), w.rev, ctx.Err())
		case <-tick.C:
		}
	}
	return w
}

// marshalled encodes m for f.Add.
func marshalled(f *testing.F, m proto.Message) []byte {
	f.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzRange sends a RangeRequest to etcd and to the replica and requires the same outcome:
// the same kvs, count, more and header revision, or the same gRPC code and message.
func FuzzRange(f *testing.F) {
	w := newFuzzWorld(f)
	for _, r := range []*pb.RangeRequest{
		{Key: []byte("a")},
		{Key: []byte("a"), Serializable: true},
		{Key: []byte("a/"), RangeEnd: []byte("a0")},
		{Key: []byte("a"), RangeEnd: []byte{0}, Limit: 2},
		{Key: []byte{0}, RangeEnd: []byte{0}},
		{Key: []byte{0}, RangeEnd: []byte{0}, SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_VALUE, Limit: 3},
		{Key: []byte{0}, RangeEnd: []byte{0}, SortTarget: pb.RangeRequest_MOD, KeysOnly: true},
		{Key: []byte{0}, RangeEnd: []byte{0}, CountOnly: true, MinModRevision: 4, MaxCreateRevision: 9},
		{Key: []byte("z"), RangeEnd: []byte("a")},
		{Key: []byte("a"), RangeEnd: []byte("a")},
		{RangeEnd: []byte{0}},
		{Key: []byte("a"), SortOrder: 9},
		{Key: []byte("a"), SortTarget: 9},
		{Key: []byte{0}, RangeEnd: []byte{0}, Revision: w.compact - 1},
		{Key: []byte{0}, RangeEnd: []byte{0}, Revision: w.compact},
		{Key: []byte{0}, RangeEnd: []byte{0}, Revision: w.compact + 2, Serializable: true},
		{Key: []byte("a"), RangeEnd: []byte("c"), Revision: w.rev - 1, Limit: 1},
		{Key: []byte("a"), Revision: w.rev + 1},
		{Key: []byte("a"), Revision: math.MaxInt64, Serializable: true},
		{Key: []byte("a"), Revision: -1, Limit: -1},
		{Key: []byte{0xff}, RangeEnd: []byte{0}, Limit: math.MaxInt64},
	} {
		f.Add(marshalled(f, r))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r pb.RangeRequest
		if proto.Unmarshal(data, &r) != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		want := doRange(ctx, pb.NewKVClient(w.etcd), &r)
		got := doRange(ctx, pb.NewKVClient(w.gw), &r)
		if diff := gocmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Fatalf("range differs from etcd's (revision %d, compacted at %d)\nrequest: %v\n(-etcd +gateway):\n%s",
				w.rev, w.compact, &r, diff)
		}
	})
}

// watchOutcome is what a watch create deterministically gets from a server that takes no
// writes: the first response and, for a start revision in the past that was not refused, every
// event up to the current revision and the response that ends them (a cancellation, or the
// progress notification that says every event up to the revision has been sent).
type watchOutcome struct {
	First  *pb.WatchResponse
	Events []*mvccpb.Event
	End    *pb.WatchResponse
	Err    string
}

// FuzzWatchCreate sends a WatchCreateRequest on a fresh watch stream to etcd and to the
// replica and requires the same outcome: the same Created response (watch id, canceled, cancel
// reason, compact revision, header revision), and for a watch from a past revision the same
// events up to the current revision, then the same cancellation or progress notification.
func FuzzWatchCreate(f *testing.F) {
	w := newFuzzWorld(f)
	for _, cr := range []*pb.WatchCreateRequest{
		{Key: []byte("a")},
		{Key: []byte("a"), StartRevision: w.rev + 1},
		{Key: []byte("a"), StartRevision: math.MaxInt64},
		{Key: []byte("a"), StartRevision: -1},
		{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: 1},
		{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: w.compact - 1},
		{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: w.compact, PrevKv: true},
		{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: w.compact + 1, PrevKv: true},
		{Key: []byte("a/"), RangeEnd: []byte("a0"), StartRevision: w.rev - 3, PrevKv: true, Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT}},
		{Key: []byte("a"), RangeEnd: []byte{0}, StartRevision: w.rev - 1, Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE, 7}},
		{Key: []byte("a"), StartRevision: w.rev, WatchId: 7, ProgressNotify: true, Fragment: true},
		{Key: []byte("a"), WatchId: -1, StartRevision: w.rev},
		{Key: []byte("z"), RangeEnd: []byte("a")},
		{Key: []byte("a"), RangeEnd: []byte("a"), StartRevision: -5},
		{RangeEnd: []byte("b"), StartRevision: w.compact},
		{},
	} {
		f.Add(marshalled(f, cr))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var cr pb.WatchCreateRequest
		if proto.Unmarshal(data, &cr) != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Both at once: etcd moves a watcher from the past into its synced set only every 100 ms.
		wantc := make(chan watchOutcome, 1)
		go func() { wantc <- w.watch(ctx, w.etcd, &cr) }()
		got := w.watch(ctx, w.gw, &cr)
		want := <-wantc
		if want.Err != "" {
			t.Fatalf("etcd: %s\nrequest: %v", want.Err, &cr)
		}
		if diff := gocmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Fatalf("watch differs from etcd's (revision %d, compacted at %d)\nrequest: %v\n(-etcd +gateway):\n%s",
				w.rev, w.compact, &cr, diff)
		}
	})
}

// watch creates cr on a new watch stream of conn and returns its outcome.
func (w *fuzzWorld) watch(ctx context.Context, conn *grpc.ClientConn, cr *pb.WatchCreateRequest) (out watchOutcome) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws, err := pb.NewWatchClient(conn).Watch(ctx)
	if err != nil {
		return watchOutcome{Err: fmt.Sprintf("open: %v", err)}
	}
	type recv struct {
		resp *pb.WatchResponse
		err  error
	}
	rc := make(chan recv)
	go func() {
		for {
			resp, err := ws.Recv()
			select {
			case rc <- recv{resp, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	if err := ws.Send(create(cr)); err != nil {
		return watchOutcome{Err: fmt.Sprintf("send: %v", err)}
	}
	var r recv
	select {
	case r = <-rc:
	case <-ctx.Done():
		return watchOutcome{Err: "no created response"}
	}
	if r.err != nil {
		return watchOutcome{Err: fmt.Sprintf("recv: %v", r.err)}
	}
	out.First = normalized(r.resp)
	if r.resp.Canceled || !r.resp.Created || cr.StartRevision <= 0 || cr.StartRevision > w.rev {
		return out // from now or from the future: nothing more comes while nothing is written
	}
	// Ask for progress until it comes: both servers answer only once the watcher has caught
	// up, after every event up to the current revision.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := ws.Send(progressReq()); err != nil {
			out.Err = fmt.Sprintf("send progress request: %v", err)
			return out
		}
		select {
		case r = <-rc:
		case <-tick.C:
			continue
		case <-ctx.Done():
			out.Err = fmt.Sprintf("no progress notification after %d events", len(out.Events))
			return out
		}
		if r.err != nil {
			out.Err = fmt.Sprintf("recv: %v", r.err)
			return out
		}
		out.Events = append(out.Events, r.resp.Events...)
		if len(r.resp.Events) == 0 || r.resp.Canceled {
			end := normalized(r.resp)
			end.Events = nil
			out.End = end
			return out
		}
	}
}
