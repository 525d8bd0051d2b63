// passthrough_test.go runs the same test bodies against etcd directly and through the gateway's
// pass-through services (each side on its own fresh embedded etcd, driven identically) and
// requires identical responses and identical errors.

package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/internal/embedded"
	"github.com/watchgate/watchgate/internal/testenv"
)

// etcdMaxRecvMsgSize is the gRPC receive limit of an etcd member with the default
// MaxRequestBytes (1.5 MiB) plus etcd's 512 KiB gRPC overhead; the test gateway uses the same,
// so that over-limit requests fail identically.
const etcdMaxRecvMsgSize = 3<<19 + 512<<10

// startPassthrough serves the pass-through KV, Lease, Maintenance and Cluster services for
// member on a free loopback port, advertising its own URL, and returns that URL. The server
// stops at cleanup.
func startPassthrough(t testing.TB, member *clientv3.Client) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + lis.Addr().String()
	conn := member.ActiveConnection()
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(etcdMaxRecvMsgSize), grpc.MaxSendMsgSize(math.MaxInt32))
	pb.RegisterKVServer(srv, newKVServer(conn))
	pb.RegisterLeaseServer(srv, newLeaseServer(conn))
	pb.RegisterMaintenanceServer(srv, newMaintenanceServer(conn))
	pb.RegisterClusterServer(srv, newClusterServer(conn, endpoint))
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis) // returns nil after Stop
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return endpoint
}

// newTestClient returns a clientv3 client for endpoint whose send limit (4 MiB) lets requests
// bigger than the server's receive limit reach the server. The caller closes it.
func newTestClient(t testing.TB, endpoint string, token string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:          []string{endpoint},
		DialTimeout:        10 * time.Second,
		MaxCallSendMsgSize: 4 << 20,
		Token:              token,
		Logger:             zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// testClient is newTestClient closed at cleanup.
func testClient(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	c := newTestClient(t, endpoint, "")
	t.Cleanup(func() { c.Close() })
	return c
}

// gatewayTo starts a gateway in front of the etcd at etcdEndpoint and returns its URL.
func gatewayTo(t testing.TB, etcdEndpoint string) string {
	t.Helper()
	return startPassthrough(t, testenv.Client(t, etcdEndpoint))
}

// errSummary is what a client can tell about an error: its gRPC code, etcd's description and
// the full text.
type errSummary struct {
	Code codes.Code
	Desc string
	Text string
}

// summarize returns err's summary, or nil for no error. clientv3 turns etcd's status errors into
// rpctypes.EtcdError values, which carry their code themselves.
func summarize(err error) *errSummary {
	if err == nil {
		return nil
	}
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	return &errSummary{Code: code, Desc: rpctypes.ErrorDesc(err), Text: err.Error()}
}

// steps records the responses of a test body's calls, in order, and the first error. Every call
// is made whatever happened before, so both sides of a comparison do the same writes.
type steps struct {
	out []any
	err error
}

// add records one call's result; clientv3's KV response types become their protobuf types so
// protocmp can compare them.
func (s *steps) add(resp any, err error) {
	if s.err != nil {
		return
	}
	if err != nil {
		s.err = err
		return
	}
	switch r := resp.(type) {
	case *clientv3.GetResponse:
		resp = (*pb.RangeResponse)(r)
	case *clientv3.PutResponse:
		resp = (*pb.PutResponse)(r)
	case *clientv3.DeleteResponse:
		resp = (*pb.DeleteRangeResponse)(r)
	case *clientv3.TxnResponse:
		resp = (*pb.TxnResponse)(r)
	case *clientv3.CompactResponse:
		resp = (*pb.CompactionResponse)(r)
	case *clientv3.LeaseRevokeResponse:
		resp = (*pb.LeaseRevokeResponse)(r)
	}
	s.out = append(s.out, resp)
}

func (s *steps) result() (any, error) { return s.out, s.err }

// compareOpts compares responses of two distinct etcd members: their cluster and member IDs
// differ by construction, and the raft term is theirs alone.
func compareOpts() cmp.Options {
	return cmp.Options{
		protocmp.Transform(),
		protocmp.IgnoreFields(&pb.ResponseHeader{}, "cluster_id", "member_id", "raft_term"),
	}
}

// TestPassthroughSameAsEtcd runs every body of passthroughCases against one fresh etcd directly
// and against a second fresh etcd through the gateway, in the same order, and requires the same
// responses (revisions included) and the same errors (code, description and text).
func TestPassthroughSameAsEtcd(t *testing.T) {
	direct := testClient(t, testenv.Etcd(t).Endpoint)
	viaGateway := testClient(t, gatewayTo(t, testenv.Etcd(t).Endpoint))
	for _, tc := range passthroughCases() {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			want, wantErr := tc.run(ctx, direct)
			got, gotErr := tc.run(ctx, viaGateway)
			if diff := cmp.Diff(summarize(wantErr), summarize(gotErr)); diff != "" {
				t.Errorf("error differs (-etcd +gateway):\n%s", diff)
			}
			if diff := cmp.Diff(want, got, compareOpts()); diff != "" {
				t.Errorf("response differs (-etcd +gateway):\n%s", diff)
			}
			if tc.wantErr != nil {
				if diff := cmp.Diff(tc.wantErr, summarize(gotErr)); diff != "" {
					t.Errorf("gateway error (-want +got):\n%s", diff)
				}
			}
			if gotErr != nil {
				t.Logf("error: %v", gotErr)
			}
		})
	}
}

// TestPassthroughAuthToken checks that the caller's auth token reaches the member: with auth
// enabled, a client holding a token writes through the gateway, and one without gets etcd's own
// refusal, as it does from etcd directly.
func TestPassthroughAuthToken(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	e := testenv.Etcd(t)
	admin := testenv.Client(t, e.Endpoint)
	testenv.EnableAuth(ctx, t, admin)
	auth, err := admin.Authenticate(ctx, "root", testenv.RootPassword)
	if err != nil {
		t.Fatal(err)
	}
	gateway := gatewayTo(t, e.Endpoint)

	withToken := newTestClient(t, gateway, auth.Token)
	defer withToken.Close()
	if _, err := withToken.Put(ctx, "auth/k", "v"); err != nil {
		t.Fatalf("put with token through gateway: %v", err)
	}
	got, err := withToken.Get(ctx, "auth/k")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v" {
		t.Fatalf("get with token through gateway = %v, %v; want auth/k=v", got, err)
	}

	_, directErr := testClient(t, e.Endpoint).Put(ctx, "auth/k", "no token")
	_, gatewayErr := testClient(t, gateway).Put(ctx, "auth/k", "no token")
	want := &errSummary{Code: codes.InvalidArgument, Desc: "etcdserver: user name is empty", Text: "etcdserver: user name is empty"}
	if diff := cmp.Diff(want, summarize(directErr)); diff != "" {
		t.Errorf("direct put without token (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, summarize(gatewayErr)); diff != "" {
		t.Errorf("gateway put without token (-want +got):\n%s", diff)
	}
}

// TestPassthroughMetadata checks which incoming metadata passthroughContext forwards: the
// caller's keys, not the transport's headers.
func TestPassthroughMetadata(t *testing.T) {
	in := metadata.MD{
		":authority":           {"gw:2379"},
		"content-type":         {"application/grpc"},
		"user-agent":           {"grpc-go/1.0"},
		"grpc-accept-encoding": {"gzip"},
		"hasleader":            {"true"},
		"token":                {"t0k3n"},
		"client-api-version":   {"3.7"},
	}
	ctx := passthroughContext(metadata.NewIncomingContext(t.Context(), in))
	out, _ := metadata.FromOutgoingContext(ctx)
	want := metadata.MD{"hasleader": {"true"}, "token": {"t0k3n"}, "client-api-version": {"3.7"}}
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("outgoing metadata (-want +got):\n%s", diff)
	}
	if _, ok := metadata.FromOutgoingContext(passthroughContext(t.Context())); ok {
		t.Error("outgoing metadata set for a call without incoming metadata")
	}
}

// TestLeaseKeepAliveNoLeak keeps a lease alive through the gateway over raw streams that the
// client cancels or half-closes, and with clientv3's KeepAlive, and requires every goroutine a
// stream started (in the client, the gateway and etcd) to be gone once the stream has ended.
func TestLeaseKeepAliveNoLeak(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	member := testenv.Client(t, testenv.Etcd(t).Endpoint)
	if _, err := member.Get(ctx, "warm-up"); err != nil { // connect before taking the baseline
		t.Fatal(err)
	}
	gateway := startPassthrough(t, member)
	noClient := goleak.IgnoreCurrent()

	c := newTestClient(t, gateway, "")
	defer c.Close()
	lease, err := c.Grant(ctx, 3) // clientv3 sends keep-alives every TTL/3: every second
	if err != nil {
		t.Fatal(err)
	}
	idle := goleak.IgnoreCurrent()

	lc := pb.NewLeaseClient(c.ActiveConnection())
	for _, end := range []string{"cancel", "half-close"} {
		sctx, scancel := context.WithCancel(ctx)
		stream, err := lc.LeaseKeepAlive(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(lease.ID)}); err != nil {
			t.Fatal(err)
		}
		if resp, err := stream.Recv(); err != nil || resp.TTL <= 0 {
			t.Fatalf("%s: keep-alive = %v, %v; want lease alive", end, resp, err)
		}
		if end == "half-close" {
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
				t.Errorf("%s: stream ended with %v, want io.EOF", end, err)
			}
		}
		scancel()
		goleak.VerifyNone(t, idle)
	}

	kaCtx, stop := context.WithCancel(ctx)
	ch, err := c.KeepAlive(kaCtx, lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case resp, ok := <-ch:
			if !ok || resp.ID != lease.ID || resp.TTL <= 0 {
				t.Fatalf("keep-alive response %v, open %v; want lease %x alive", resp, ok, lease.ID)
			}
		case <-ctx.Done():
			t.Fatal("no keep-alive response in time")
		}
	}
	stop()
drain: // the channel closes once the keep-alive is stopped
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				break drain
			}
		case <-ctx.Done():
			t.Fatal("keep-alive channel still open after stop")
		}
	}
	if _, err := c.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	// clientv3's lessor keeps its stream open until the client closes.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, noClient)
}

// TestLeaseKeepAliveUpstreamError stops the member under an open keep-alive stream and requires
// the client's stream to end with the member's error, as it does when talking to etcd directly,
// rather than hang or end cleanly.
func TestLeaseKeepAliveUpstreamError(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// Not testenv.Etcd: this test closes the member itself, and embed.Etcd.Close panics if
	// called twice.
	e, err := embedded.StartEtcd(embedded.EtcdOptions{Dir: t.TempDir(), UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	var closeOnce sync.Once
	closeMember := func() { closeOnce.Do(e.Close) }
	t.Cleanup(closeMember)
	direct := pb.NewLeaseClient(testClient(t, e.Endpoint).ActiveConnection())
	viaGateway := pb.NewLeaseClient(testClient(t, gatewayTo(t, e.Endpoint)).ActiveConnection())
	if _, err := direct.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 7, TTL: 60}); err != nil {
		t.Fatal(err)
	}
	var streams []grpc.BidiStreamingClient[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]
	for _, lc := range []pb.LeaseClient{direct, viaGateway} {
		s, err := lc.LeaseKeepAlive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&pb.LeaseKeepAliveRequest{ID: 7}); err != nil {
			t.Fatal(err)
		}
		if resp, err := s.Recv(); err != nil || resp.TTL <= 0 {
			t.Fatalf("keep-alive = %v, %v; want lease 7 alive", resp, err)
		}
		streams = append(streams, s)
	}
	closeMember()
	var errs []*errSummary
	for _, s := range streams {
		_, err := s.Recv()
		if err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("keep-alive stream ended with %v after the member stopped; want an error", err)
		}
		t.Logf("stream error: %v", err)
		errs = append(errs, summarize(err))
	}
	// The texts are the transport's and can differ by timing (whether the GOAWAY was seen).
	if errs[0].Code != errs[1].Code {
		t.Errorf("stream error code: etcd %v, gateway %v", errs[0].Code, errs[1].Code)
	}
}

// TestStatusThroughGateway compares Status through the gateway with the member's own.
func TestStatusThroughGateway(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	e := testenv.Etcd(t)
	direct := testClient(t, e.Endpoint)
	gateway := gatewayTo(t, e.Endpoint)
	want, err := direct.Status(ctx, e.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	got, err := testClient(t, gateway).Status(ctx, gateway)
	if err != nil {
		t.Fatal(err)
	}
	if reportedVersion(got.Version) != got.Version || got.Version != want.Version {
		t.Errorf("Version = %q, want the member's %q (>= %s)", got.Version, want.Version, minReportedVersion)
	}
	if got.DbSize <= 0 || got.Leader != want.Leader || got.Header.ClusterId != want.Header.ClusterId {
		t.Errorf("Status = %v, want the member's %v", got, want)
	}
}

// TestStatusVersionFloor checks the version Status reports for various member versions.
func TestStatusVersionFloor(t *testing.T) {
	for _, tc := range []struct{ member, want string }{
		{"3.4.34", "3.5.13"},
		{"3.5.12", "3.5.13"},
		{"3.5.13-rc.0", "3.5.13"},
		{"3.5.13", "3.5.13"},
		{"3.5.21", "3.5.21"},
		{"3.7.3", "3.7.3"},
		{"3.10.0", "3.10.0"},
		{"4.0.0-alpha.1", "4.0.0-alpha.1"},
		{"", "3.5.13"},
		{"not a version", "3.5.13"},
		{"3.6", "3.5.13"},
	} {
		if got := reportedVersion(tc.member); got != tc.want {
			t.Errorf("reportedVersion(%q) = %q, want %q", tc.member, got, tc.want)
		}
	}
}

// TestMemberList checks that MemberList through the gateway lists the gateway itself, with the
// member cluster's ID, linearizable or not, and that membership changes are refused.
func TestMemberList(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	e := testenv.Etcd(t)
	direct, err := testClient(t, e.Endpoint).MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gateway := gatewayTo(t, e.Endpoint)
	c := testClient(t, gateway)
	id := gatewayMemberID(gateway)
	want := &pb.MemberListResponse{
		Header: &pb.ResponseHeader{ClusterId: direct.Header.ClusterId, MemberId: id},
		Members: []*pb.Member{{
			ID:         id,
			Name:       "watchgate-" + strings.TrimPrefix(gateway, "http://"),
			ClientURLs: []string{gateway},
		}},
	}
	for _, opts := range [][]clientv3.OpOption{nil, {clientv3.WithSerializable()}} {
		got, err := c.MemberList(ctx, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, (*pb.MemberListResponse)(got), protocmp.Transform(),
			protocmp.IgnoreFields(&pb.ResponseHeader{}, "raft_term", "revision")); diff != "" {
			t.Errorf("MemberList(%d opts) (-want +got):\n%s", len(opts), diff)
		}
	}
	if _, err := c.MemberAdd(ctx, []string{"http://127.0.0.1:1"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("MemberAdd through gateway: %v, want Unimplemented", err)
	}
	if _, err := c.Defragment(ctx, gateway); status.Code(err) != codes.Unimplemented {
		t.Errorf("Defragment through gateway: %v, want Unimplemented", err)
	}
}

// passthroughCase is one test body of TestPassthroughSameAsEtcd. wantErr, when set, pins the
// error etcd gives, so the test also documents etcd's exact codes and texts.
type passthroughCase struct {
	name    string
	run     func(ctx context.Context, c *clientv3.Client) (any, error)
	wantErr *errSummary
}

// etcdErr is the summary of etcd's own gRPC error e, as clientv3 reports it.
func etcdErr(e error) *errSummary {
	return &errSummary{Code: status.Code(e), Desc: rpctypes.ErrorDesc(e), Text: rpctypes.ErrorDesc(e)}
}

// rawErr is the summary of etcd's own gRPC error e, as a raw etcdserverpb client reports it.
func rawErr(e error) *errSummary {
	return &errSummary{Code: status.Code(e), Desc: rpctypes.ErrorDesc(e), Text: e.Error()}
}

// passthroughCases are the bodies TestPassthroughSameAsEtcd runs on both sides, in order. They
// share the member, so revisions carry over from case to case (identically on both sides), and
// each writes under its own key prefix.
func passthroughCases() []passthroughCase {
	big := func(n int) string { return strings.Repeat("x", n) }
	return []passthroughCase{
		{name: "put get delete with prevKV", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			var s steps
			s.add(c.Put(ctx, "kv/a", "1"))
			s.add(c.Put(ctx, "kv/a", "2", clientv3.WithPrevKV()))
			s.add(c.Get(ctx, "kv/a"))
			s.add(c.Delete(ctx, "kv/a", clientv3.WithPrevKV()))
			s.add(c.Get(ctx, "kv/a"))
			s.add(c.Delete(ctx, "kv/a", clientv3.WithPrevKV()))
			return s.result()
		}},
		{name: "range options", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			var s steps
			for _, k := range []string{"r/c", "r/a", "r/e", "r/b", "r/d"} {
				s.add(c.Put(ctx, k, "v-"+k))
			}
			s.add(c.Put(ctx, "r/a", "again"))
			s.add(c.Get(ctx, "r/", clientv3.WithPrefix()))
			s.add(c.Get(ctx, "r/", clientv3.WithPrefix(), clientv3.WithLimit(2)))
			s.add(c.Get(ctx, "r/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)))
			s.add(c.Get(ctx, "r/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortAscend), clientv3.WithLimit(3)))
			s.add(c.Get(ctx, "r/", clientv3.WithPrefix(), clientv3.WithCountOnly()))
			s.add(c.Get(ctx, "r/", clientv3.WithPrefix(), clientv3.WithKeysOnly()))
			s.add(c.Get(ctx, "r/b", clientv3.WithRange("r/d")))
			s.add(c.Get(ctx, "r/c", clientv3.WithFromKey(), clientv3.WithSerializable()))
			s.add(c.Get(ctx, "r/", clientv3.WithPrefix(), clientv3.WithMinModRev(1), clientv3.WithMaxCreateRev(1<<40)))
			if len(s.out) > 0 {
				first := s.out[0].(*pb.PutResponse).Header.Revision
				s.add(c.Get(ctx, "r/", clientv3.WithPrefix(), clientv3.WithRev(first+1)))
			}
			s.add(c.Delete(ctx, "r/", clientv3.WithPrefix(), clientv3.WithPrevKV()))
			return s.result()
		}},
		{name: "range end before key", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			var s steps
			s.add(c.Put(ctx, "re/m", "v"))
			s.add(c.Get(ctx, "re/z", clientv3.WithRange("re/a")))
			s.add(c.Delete(ctx, "re/z", clientv3.WithRange("re/a")))
			return s.result()
		}},
		{name: "txn compare and swap", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			var s steps
			s.add(c.Put(ctx, "txn/k", "old"))
			swap := func(from, to string) (*clientv3.TxnResponse, error) {
				return c.Txn(ctx).
					If(clientv3.Compare(clientv3.Value("txn/k"), "=", from)).
					Then(clientv3.OpPut("txn/k", to, clientv3.WithPrevKV())).
					Else(clientv3.OpGet("txn/k")).
					Commit()
			}
			s.add(swap("old", "new"))   // succeeds
			s.add(swap("old", "newer")) // fails: value is "new"
			s.add(c.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision("txn/absent"), "=", 0),
					clientv3.Compare(clientv3.Version("txn/k"), ">", 1)).
				Then(clientv3.OpPut("txn/absent", "created"), clientv3.OpDelete("txn/k", clientv3.WithPrevKV()),
					clientv3.OpTxn(
						[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision("txn/absent"), ">", 0)},
						[]clientv3.Op{clientv3.OpGet("txn/", clientv3.WithPrefix())},
						[]clientv3.Op{clientv3.OpPut("txn/nested-else", "x")})).
				Commit())
			s.add(c.Get(ctx, "txn/", clientv3.WithPrefix()))
			return s.result()
		}},
		{name: "txn duplicate key", wantErr: etcdErr(rpctypes.ErrGRPCDuplicateKey), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return c.Txn(ctx).Then(clientv3.OpPut("dup/k", "1"), clientv3.OpPut("dup/k", "2")).Commit()
		}},
		{name: "txn too many ops", wantErr: etcdErr(rpctypes.ErrGRPCTooManyOps), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			ops := make([]clientv3.Op, 129)
			for i := range ops {
				ops[i] = clientv3.OpGet("many")
			}
			return c.Txn(ctx).Then(ops...).Commit()
		}},
		{name: "compact then read compacted revision", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			var s steps
			p1, err := c.Put(ctx, "compact/k", "1")
			s.add(p1, err)
			s.add(c.Put(ctx, "compact/k", "2"))
			if err != nil {
				return s.result()
			}
			rev := p1.Header.Revision
			s.add(c.Compact(ctx, rev+1, clientv3.WithCompactPhysical()))
			s.add(c.Get(ctx, "compact/k", clientv3.WithRev(rev+1)))
			_, err = c.Get(ctx, "compact/k", clientv3.WithRev(rev))
			return s.out, err
		}, wantErr: etcdErr(rpctypes.ErrGRPCCompacted)},
		{name: "compact twice", wantErr: etcdErr(rpctypes.ErrGRPCCompacted), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			p, err := c.Put(ctx, "compact2/k", "1")
			if err != nil {
				return nil, err
			}
			if _, err := c.Compact(ctx, p.Header.Revision); err != nil {
				return nil, err
			}
			return c.Compact(ctx, p.Header.Revision)
		}},
		{name: "compact future revision", wantErr: etcdErr(rpctypes.ErrGRPCFutureRev), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return c.Compact(ctx, 1<<40)
		}},
		{name: "get future revision", wantErr: etcdErr(rpctypes.ErrGRPCFutureRev), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return c.Get(ctx, "future/k", clientv3.WithRev(1<<40))
		}},
		{name: "range stream prefix", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			for i := range 20 {
				if _, err := c.Put(ctx, fmt.Sprintf("stream/%02d", i), big(1000)); err != nil {
					return nil, err
				}
			}
			ch, err := c.GetStream(ctx, "stream/", clientv3.WithPrefix())
			if err != nil {
				return nil, err
			}
			r, err := clientv3.GetStreamToGetResponse(ch)
			if err != nil {
				return nil, err
			}
			return (*pb.RangeResponse)(r), nil
		}},
		{name: "range stream future revision", wantErr: etcdErr(rpctypes.ErrGRPCFutureRev), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			ch, err := c.GetStream(ctx, "stream/", clientv3.WithPrefix(), clientv3.WithRev(1<<40))
			if err != nil {
				return nil, err
			}
			_, err = clientv3.GetStreamToGetResponse(ch)
			return nil, err
		}},
		{name: "get negative revision", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return pb.NewKVClient(c.ActiveConnection()).Range(ctx, &pb.RangeRequest{Key: []byte("neg/k"), Revision: -1})
		}},
		{name: "put empty key", wantErr: etcdErr(rpctypes.ErrGRPCEmptyKey), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return c.Put(ctx, "", "v")
		}},
		{name: "put request too large", wantErr: etcdErr(rpctypes.ErrGRPCRequestTooLarge), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return c.Put(ctx, "big/k", big(1600<<10))
		}},
		{name: "put over gRPC message limit", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return c.Put(ctx, "big/k", big(2<<20))
		}, wantErr: &errSummary{
			Code: codes.ResourceExhausted,
			Desc: "grpc: received message larger than max (2097164 vs. 2097152)",
			Text: "rpc error: code = ResourceExhausted desc = grpc: received message larger than max (2097164 vs. 2097152)",
		}},
		{name: "range response over 4 MiB", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			var s steps
			for _, k := range []string{"large/1", "large/2", "large/3"} {
				s.add(c.Put(ctx, k, big(1400<<10)))
			}
			r, err := c.Get(ctx, "large/", clientv3.WithPrefix())
			if err == nil {
				r.Kvs = nil // compare the count and header; the values are 4 MiB of "x"
			}
			s.add(r, err)
			s.add(c.Delete(ctx, "large/", clientv3.WithPrefix()))
			return s.result()
		}},
		{name: "require leader", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			ctx = clientv3.WithRequireLeader(ctx)
			var s steps
			s.add(c.Put(ctx, "leader/k", "v"))
			s.add(c.Get(ctx, "leader/k"))
			return s.result()
		}},
		{name: "lease lifecycle", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			lc := pb.NewLeaseClient(c.ActiveConnection())
			var s steps
			s.add(lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 1001, TTL: 60}))
			s.add(lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 1002, TTL: 120}))
			s.add(c.Put(ctx, "lease/a", "1", clientv3.WithLease(1001)))
			s.add(c.Put(ctx, "lease/b", "2", clientv3.WithLease(1001)))
			ttl, err := c.TimeToLive(ctx, 1001, clientv3.WithAttachedKeys())
			if err == nil && ttl.TTL > 0 && ttl.TTL <= ttl.GrantedTTL {
				ttl.TTL = ttl.GrantedTTL // the seconds left depend on timing; their range does not
			}
			s.add(ttl, err)
			s.add(c.Leases(ctx))
			s.add(c.KeepAliveOnce(ctx, 1002))
			s.add(c.Revoke(ctx, 1001))
			s.add(c.Get(ctx, "lease/", clientv3.WithPrefix()))
			s.add(c.TimeToLive(ctx, 1001)) // gone: TTL -1, no error
			s.add(c.Revoke(ctx, 1002))
			s.add(c.Leases(ctx))
			return s.result()
		}},
		{name: "lease granted with etcd's ID", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			g, err := c.Grant(ctx, 30)
			if err != nil {
				return nil, err
			}
			_, err = c.Revoke(ctx, g.ID)
			return []any{g.ID != 0, g.TTL, g.Error}, err
		}},
		{name: "lease already exists", wantErr: rawErr(rpctypes.ErrGRPCLeaseExist), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			lc := pb.NewLeaseClient(c.ActiveConnection())
			if _, err := lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 2001, TTL: 60}); err != nil {
				return nil, err
			}
			defer c.Revoke(ctx, 2001)
			return lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 2001, TTL: 60})
		}},
		{name: "revoke unknown lease", wantErr: etcdErr(rpctypes.ErrGRPCLeaseNotFound), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return c.Revoke(ctx, 9999)
		}},
		{name: "time to live of unknown lease", run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return c.TimeToLive(ctx, 9999, clientv3.WithAttachedKeys())
		}},
		{name: "keep alive once unknown lease", wantErr: etcdErr(rpctypes.ErrGRPCLeaseNotFound), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return c.KeepAliveOnce(ctx, 9999)
		}},
		{name: "put with unknown lease", wantErr: etcdErr(rpctypes.ErrGRPCLeaseNotFound), run: func(ctx context.Context, c *clientv3.Client) (any, error) {
			return c.Put(ctx, "lease/x", "v", clientv3.WithLease(9999))
		}},
		{name: "keep alive stream", run: keepAliveStream},
	}
}

// keepAliveStream keeps a lease alive over one raw LeaseKeepAlive stream (including a request
// for an unknown lease), half-closes it and requires a clean end.
func keepAliveStream(ctx context.Context, c *clientv3.Client) (any, error) {
	lc := pb.NewLeaseClient(c.ActiveConnection())
	if _, err := lc.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 3001, TTL: 60}); err != nil {
		return nil, err
	}
	defer lc.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: 3001})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := lc.LeaseKeepAlive(ctx)
	if err != nil {
		return nil, err
	}
	var out []any
	for _, id := range []int64{3001, 3001, 3002, 3001} {
		if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
			return out, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return out, err
		}
		out = append(out, resp)
	}
	if err := stream.CloseSend(); err != nil {
		return out, err
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		return out, err
	}
	return append(out, "EOF"), nil
}
