package gateway_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/internal/stack"
	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// Hostile clients against a whole stack: requests past etcd's limits, deep and wide
// transactions, extreme revisions, create storms and streams that never read. Where etcd defines
// an answer, the replica must give etcd's own, compared with etcd's answer to the same request;
// where it does not, the replica must stay bounded and keep serving everyone else.

// callOutcome is what a client can tell of a unary call: the response, or the error's gRPC code
// and message.
type callOutcome struct {
	Resp proto.Message
	Code codes.Code
	Msg  string
}

// String shows the outcome, the response cut short.
func (o callOutcome) String() string {
	if o.Resp == nil {
		return fmt.Sprintf("%v: %s", o.Code, o.Msg)
	}
	text := prototext.Format(o.Resp)
	if len(text) > 2000 {
		text = text[:2000] + "..."
	}
	return text
}

func outcomeOf(resp proto.Message, err error) callOutcome {
	if err != nil {
		s := status.Convert(err)
		return callOutcome{Code: s.Code(), Msg: s.Message()}
	}
	return callOutcome{Resp: resp}
}

// nestedTxn is a read-only txn nested depth levels deep, a Range of key at the bottom, each level
// holding ops operations.
func nestedTxn(depth, ops int, key string) *pb.TxnRequest {
	r := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key)}}}}}
	for range depth - 1 {
		succ := []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: r}}}
		for range ops - 1 {
			succ = append(succ, &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key)}}})
		}
		r = &pb.TxnRequest{Success: succ}
	}
	return r
}

// TestHostileRequestsMatchEtcd sends requests past etcd's limits, or at the edges of what it
// accepts, to etcd and to the replica (which answers the reads from its cache), and requires the
// same answer: etcd's error with its code and text, or the same response. None of them writes,
// so the revision does not move between the two.
func TestHostileRequestsMatchEtcd(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	w := newFuzzWorld(t)
	over := strings.Repeat("k", 1600<<10)     // past etcd's 1.5 MiB request limit, within gRPC's 2 MiB
	overGRPC := strings.Repeat("k", 2100<<10) // past the 2 MiB gRPC message limit of both
	put := func(key, value string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte(value)}}}
	}
	get := func(key string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key)}}}
	}
	ranges := func(n int) []*pb.RequestOp {
		ops := make([]*pb.RequestOp, n)
		for i := range ops {
			ops[i] = get(fmt.Sprintf("a/%d", i))
		}
		return ops
	}
	cases := []struct {
		name string
		call func(ctx context.Context, conn *grpc.ClientConn) (proto.Message, error)
		want codes.Code // etcd's code, pinned so the case cannot quietly stop testing what it names
	}{
		{"put with a value past the request limit", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Put(ctx, &pb.PutRequest{Key: []byte("big"), Value: []byte(over)})
		}, codes.InvalidArgument},
		{"put with a key past the request limit", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Put(ctx, &pb.PutRequest{Key: []byte(over), Value: []byte("v")})
		}, codes.InvalidArgument},
		{"put past the gRPC message limit", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Put(ctx, &pb.PutRequest{Key: []byte("big"), Value: []byte(overGRPC)})
		}, codes.ResourceExhausted},
		{"txn whose puts together pass the request limit", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put("big/1", over[:800<<10]), put("big/2", over[:800<<10])}})
		}, codes.InvalidArgument},
		{"delete range with a key past the request limit", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte(over)})
		}, codes.InvalidArgument},
		{"range of a key past the request limit", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Range(ctx, &pb.RangeRequest{Key: []byte(over)}) // reads are not held to it
		}, codes.OK},
		{"range from a key past the request limit, serializable", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Range(ctx, &pb.RangeRequest{Key: []byte(over), RangeEnd: []byte{0}, Serializable: true})
		}, codes.OK},
		{"range of a key past the gRPC message limit", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Range(ctx, &pb.RangeRequest{Key: []byte(overGRPC)})
		}, codes.ResourceExhausted},
		{"txn of 128 reads", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Txn(ctx, &pb.TxnRequest{Success: ranges(128)})
		}, codes.OK},
		{"txn of 129 reads", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Txn(ctx, &pb.TxnRequest{Success: ranges(129)})
		}, codes.InvalidArgument},
		{"txn of 129 compares", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			cmps := make([]*pb.Compare, 129)
			for i := range cmps {
				cmps[i] = &pb.Compare{Key: []byte("a"), Target: pb.Compare_VERSION, Result: pb.Compare_GREATER}
			}
			return pb.NewKVClient(c).Txn(ctx, &pb.TxnRequest{Compare: cmps})
		}, codes.InvalidArgument},
		{"txn with 129 ops in its else branch", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Txn(ctx, &pb.TxnRequest{Failure: ranges(129)})
		}, codes.InvalidArgument},
		{"nested txns 100 deep", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Txn(ctx, nestedTxn(100, 1, "b"))
		}, codes.OK},
		{"nested txns past the ops budget by depth", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Txn(ctx, nestedTxn(200, 1, "b")) // each level spends from the 128
		}, codes.InvalidArgument},
		{"nested txns past the ops budget by width", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Txn(ctx, nestedTxn(3, 100, "b"))
		}, codes.InvalidArgument},
		{"nested txns past protobuf's recursion limit", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Txn(ctx, nestedTxn(6000, 1, "b"))
		}, codes.Internal},
		{"nested txn writing a key its parent writes", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			inner := &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: []*pb.RequestOp{put("dup", "2")}}}}
			return pb.NewKVClient(c).Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{put("dup", "1"), inner}})
		}, codes.InvalidArgument},
		{"txn compare with an empty key", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Txn(ctx, &pb.TxnRequest{Compare: []*pb.Compare{{Target: pb.Compare_VERSION}}})
		}, codes.InvalidArgument},
		{"range at the largest revision", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Range(ctx, &pb.RangeRequest{Key: []byte("a"), Revision: math.MaxInt64})
		}, codes.OutOfRange},
		{"serializable range at the largest revision", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Range(ctx, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: math.MaxInt64, Serializable: true})
		}, codes.OutOfRange},
		{"range at the smallest revision", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Range(ctx, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: math.MinInt64, Limit: math.MinInt64})
		}, codes.OK},
		{"range at a compacted revision, serializable", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Range(ctx, &pb.RangeRequest{Key: []byte("a"), Revision: 1, Serializable: true})
		}, codes.OutOfRange},
		{"range with extreme revision filters", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Range(ctx, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, MinModRevision: math.MinInt64,
				MaxModRevision: math.MaxInt64, MinCreateRevision: -1, MaxCreateRevision: math.MinInt64, Limit: 1})
		}, codes.OK},
		{"range with range_end before key", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Range(ctx, &pb.RangeRequest{Key: []byte("z"), RangeEnd: []byte("a"), Revision: w.compact})
		}, codes.OK},
		{"compact at revision 0", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Compact(ctx, &pb.CompactionRequest{})
		}, codes.OutOfRange},
		{"compact at a negative revision", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Compact(ctx, &pb.CompactionRequest{Revision: math.MinInt64})
		}, codes.OutOfRange},
		{"compact at the largest revision", func(ctx context.Context, c *grpc.ClientConn) (proto.Message, error) {
			return pb.NewKVClient(c).Compact(ctx, &pb.CompactionRequest{Revision: math.MaxInt64})
		}, codes.OutOfRange},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := outcomeOf(c.call(ctx, w.etcd))
			if want.Code != c.want {
				t.Fatalf("etcd answered %v %q, want code %v", want.Code, want.Msg, c.want)
			}
			got := outcomeOf(c.call(ctx, w.gw))
			// proto.Equal rather than a diff: the nested txns' responses are too deep for cmp.
			if want.Code != got.Code || want.Msg != got.Msg || !proto.Equal(want.Resp, got.Resp) {
				t.Errorf("etcd: %s\ngateway: %s", want, got)
			}
			if want.Code != codes.OK {
				t.Logf("%v: %s", want.Code, want.Msg)
			}
		})
	}
	if r := doRange(ctx, pb.NewKVClient(w.etcd), &pb.RangeRequest{Key: []byte("a")}); r.Resp == nil || r.Resp.Header.Revision != w.rev {
		t.Fatalf("etcd moved from revision %d: %+v (a case wrote)", w.rev, r)
	}
}

// TestHostileWatchCreatesMatchEtcd creates watches past the limits and at the edges of the
// revisions etcd accepts, each on a fresh stream of etcd and of the replica, and requires the
// same answers (see FuzzWatchCreate): a key too large for etcd's request limit but not for gRPC
// is watched, one too large for gRPC ends the stream with gRPC's own error, and compacted,
// negative, huge and future start revisions are answered as etcd answers them, the compaction
// notice included (canceled with the compact revision and no header revision).
func TestHostileWatchCreatesMatchEtcd(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	w := newFuzzWorld(t)
	over := []byte(strings.Repeat("k", 1600<<10))
	overGRPC := []byte(strings.Repeat("k", 2100<<10))
	for _, c := range []struct {
		name string
		cr   *pb.WatchCreateRequest
	}{
		{"key past the request limit", &pb.WatchCreateRequest{Key: over}},
		{"range from a key past the request limit, from the past", &pb.WatchCreateRequest{Key: over, RangeEnd: []byte{0}, StartRevision: w.rev - 1}},
		{"key past the gRPC message limit", &pb.WatchCreateRequest{Key: overGRPC}},
		{"range_end before key, from the past", &pb.WatchCreateRequest{Key: []byte("z"), RangeEnd: []byte("a"), StartRevision: w.rev - 1}},
		{"smallest start revision", &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: math.MinInt64}},
		{"largest start revision", &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: math.MaxInt64}},
		{"future start revision", &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: w.rev + 1}},
		{"first revision", &pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: 1, PrevKv: true}},
		{"compacted start revision", &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: w.compact - 1, PrevKv: true}},
		{"the compact revision", &pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: w.compact, PrevKv: true}},
		{"largest watch id", &pb.WatchCreateRequest{Key: []byte("a"), WatchId: math.MaxInt64, StartRevision: w.rev}},
		{"negative watch id", &pb.WatchCreateRequest{Key: []byte("a"), WatchId: -7, StartRevision: w.rev}},
		{"unknown filter", &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: w.compact, Filters: []pb.WatchCreateRequest_FilterType{9, -1}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			wantc := make(chan watchOutcome, 1)
			go func() { wantc <- w.watch(ctx, w.etcd, c.cr) }()
			got := w.watch(ctx, w.gw, c.cr)
			want := <-wantc
			if diff := gocmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("(-etcd +gateway):\n%s", diff)
			}
		})
	}
}

// TestWatchCreateStorm has one stream create watchers as fast as it can, first canceling each
// one (reading every answer), then never reading at all, while another client watches, writes
// and reads through the same replica. The other client must be served throughout; the
// canceled watchers must all be released; and the stream that never reads must stall on its
// own: once its answers fill what its stream may queue and gRPC's flow-control windows, the
// replica stops taking its requests, so it holds a bounded number of its watchers however many
// the client sends.
func TestWatchCreateStorm(t *testing.T) {
	const sendBuffer = 16
	ctx := testenv.Context(t, 2*time.Minute)
	reader := sdkmetric.NewManualReader()
	st := stacktest.Start(t, func(o *stack.Options) {
		o.Gateway.WatchSendBuffer = sendBuffer
		o.Gateway.Meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("")
	})
	watchers := func() int64 { return sumCounter(t, reader, "watchgate.gateway.watchers") }
	calm := testenv.Client(t, st.ClientURL)
	round := 0
	// served is one round of the other client: a watch from now sees a write, a read sees it.
	served := func() {
		t.Helper()
		round++
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		key := fmt.Sprintf("calm/%d", round)
		wch := calm.Watch(rctx, key, clientv3.WithCreatedNotify())
		if resp := <-wch; !resp.Created {
			t.Fatalf("round %d: watch not created: %v", round, resp.Err())
		}
		put, err := calm.Put(rctx, key, "v")
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if resp := <-wch; len(resp.Events) != 1 || resp.Events[0].Kv.ModRevision != put.Header.Revision {
			t.Fatalf("round %d: watcher got %+v (err %v), want the put at %d", round, resp.Events, resp.Err(), put.Header.Revision)
		}
		if get, err := calm.Get(rctx, key); err != nil || len(get.Kvs) != 1 || get.Kvs[0].ModRevision != put.Header.Revision {
			t.Fatalf("round %d: get %v, %v; want the put at %d", round, get, err, put.Header.Revision)
		}
		cancel()
	}
	served()
	base := watchers() // the calm client's watchers, until clientv3 closes their streams

	// Creates from now, each canceled at once, every answer read.
	const churn = 1000
	ws, err := pb.NewWatchClient(testenv.Client(t, st.ClientURL).ActiveConnection()).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range churn {
			key := []byte(fmt.Sprintf("storm/%d", i))
			if err := ws.Send(create(&pb.WatchCreateRequest{Key: key})); err != nil {
				t.Errorf("create %d: %v", i, err)
				return
			}
			if err := ws.Send(cancelReq(int64(i))); err != nil {
				t.Errorf("cancel %d: %v", i, err)
				return
			}
		}
	})
	answered := make(chan error, 1)
	go func() {
		for i := range 2 * churn {
			resp, err := ws.Recv()
			if err != nil {
				answered <- fmt.Errorf("answer %d: %w", i, err)
				return
			}
			if id := int64(i / 2); resp.WatchId != id || resp.Created != (i%2 == 0) || resp.Canceled != (i%2 == 1) {
				answered <- fmt.Errorf("answer %d: %+v, want watcher %d created, then canceled", i, resp, id)
				return
			}
		}
		answered <- nil
	}()
	for done := false; !done; {
		served()
		select {
		case err := <-answered:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		default:
		}
	}
	wg.Wait()
	t.Logf("%d watchers created and canceled on one stream during %d rounds of another client", churn, round)
	// The calm client's last watcher is canceled by clientv3 in the background: wait for it.
	for n := watchers(); n > base; n = watchers() {
		select {
		case <-ctx.Done():
			t.Fatalf("%d watchers open after every storm watcher was canceled, want at most %d", n, base)
		case <-time.After(10 * time.Millisecond): // polling a condition
		}
	}

	// Creates that are never read, on a connection whose receive windows are fixed at gRPC's
	// initial 64 KiB (no window growth), as a default client's are until it reads.
	const window = 64 << 10
	conn, err := grpc.NewClient(strings.TrimPrefix(st.ClientURL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(window))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	stuck, err := pb.NewWatchClient(conn).Watch(sctx)
	if err != nil {
		t.Fatal(err)
	}
	var sent int64
	var sentMu sync.Mutex
	wg.Go(func() {
		for i := 0; sctx.Err() == nil; i++ {
			// From a future revision: no probe of etcd, the cheapest create there is.
			if err := stuck.Send(create(&pb.WatchCreateRequest{Key: []byte(fmt.Sprintf("stuck/%d", i)), StartRevision: math.MaxInt64})); err != nil {
				return
			}
			sentMu.Lock()
			sent++
			sentMu.Unlock()
		}
	})
	// Past the stream's queue, every Created answer the replica holds takes more than 32 bytes
	// (a header with the cluster and member ids, the watch id, gRPC's 5-byte prefix) of gRPC's
	// per-stream write quota (64 KiB) or of the client's window: once both are full, the stream
	// takes no more requests.
	const bound = sendBuffer + 2*window/32 + 64
	for prev := int64(-1); ; {
		served()
		n := watchers()
		if n > bound {
			t.Fatalf("the replica holds %d watchers of a stream that never reads, want at most %d", n, bound)
		}
		if n == prev && n > base+sendBuffer {
			break // a whole round without taking a create: the stream is stalled
		}
		prev = n
	}
	sentMu.Lock()
	total := sent
	sentMu.Unlock()
	t.Logf("a stream that never reads sent %d creates; the replica took %d of them (at most %d)", total, watchers()-base, bound)
	stop()
	conn.Close()
	wg.Wait()
}

// TestStuckStreamsShareAConnection opens several watch streams that never read on one client
// connection, next to a healthy watch stream on that same connection, and writes far more than
// the stuck streams may queue. The healthy watcher must receive every event in order as they
// happen; the stuck streams' watchers must fall back to catching up from history instead of
// being buffered for (counted in watchgate.gateway.watchers_lagged); and once the stuck streams
// read again, each of their watchers receives every event, in order, with nothing lost.
// (watch_slow_test.go has a stuck stream on a connection of its own.)
func TestStuckStreamsShareAConnection(t *testing.T) {
	const streams, puts = 6, 300
	ctx := testenv.Context(t, time.Minute)
	reader := sdkmetric.NewManualReader()
	p := newParts(t, ctx)
	p.runIngest(t, ctx)
	srv, shared := p.runGateway(t, ctx, func(o *gateway.Options) {
		o.WatchSendBuffer = 16
		o.WatchSendBytes = 64 << 10
		o.Meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("")
	})
	waitReady(ctx, t, srv)
	first := testenv.Rev(ctx, t, p.member) + 1
	conn := shared.ActiveConnection()

	var stuck []pb.Watch_WatchClient
	for range streams {
		ws, err := pb.NewWatchClient(conn).Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, prevKV := range []bool{false, true} {
			if err := ws.Send(create(&pb.WatchCreateRequest{Key: []byte("hot/"), RangeEnd: []byte("hot0"), PrevKv: prevKV})); err != nil {
				t.Fatal(err)
			}
			if resp, err := ws.Recv(); err != nil || !resp.Created {
				t.Fatalf("stuck watcher: %v, %v", resp, err)
			}
		}
		stuck = append(stuck, ws) // read no more until every write is done
	}
	healthy := shared.Watch(ctx, "hot/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp := <-healthy; !resp.Created {
		t.Fatalf("healthy watch not created: %v", resp.Err())
	}

	value := strings.Repeat("x", 2048)
	var last int64
	for i := range puts {
		r, err := p.member.Put(ctx, fmt.Sprintf("hot/%d", i%20), value)
		if err != nil {
			t.Fatal(err)
		}
		last = r.Header.Revision
	}
	for next := first; next <= last; {
		select {
		case resp := <-healthy:
			if err := resp.Err(); err != nil {
				t.Fatal(err)
			}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision != next {
					t.Fatalf("healthy watcher got revision %d, want %d", ev.Kv.ModRevision, next)
				}
				next++
			}
		case <-ctx.Done():
			t.Fatalf("healthy watcher stuck at revision %d of %d", next, last)
		}
	}
	if n := sumCounter(t, reader, "watchgate.gateway.watchers_lagged"); n < streams {
		t.Errorf("watchers_lagged = %d: the stuck streams' watchers were not moved to catching up", n)
	}

	want := testenv.History(ctx, t, p.member, first, last)
	for i, ws := range stuck {
		got := map[int64][]*mvccpb.Event{}
		for len(got[0]) < puts || len(got[1]) < puts {
			resp, err := ws.Recv()
			if err != nil {
				t.Fatalf("stuck stream %d: %v (got %d and %d)", i, err, len(got[0]), len(got[1]))
			}

			got[resp.WatchId] = append(got[resp.WatchId], resp.Events...)
		}
		for id, prevKV := range []bool{false, true} {
			var evs []*mvccpb.Event
			for _, rev := range want {
				for _, ev := range rev {
					if !prevKV {
						ev = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
					}
					evs = append(evs, ev)
				}
			}
			// proto.Equal event by event: a diff of 600 events of 2 KiB takes seconds.
			for j, ev := range got[int64(id)] {
				if j >= len(evs) || !proto.Equal(ev, evs[j]) {
					t.Fatalf("stuck stream %d, watcher %d, once reading: event %d is %v, etcd's is %v", i, id, j, ev, evs[min(j, len(evs)-1)])
				}
			}
		}
	}
}
