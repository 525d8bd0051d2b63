package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/internal/testenv"
)

// The protection tier against a real replica, member and event log. Clients of one test differ
// by their loopback source address (127.0.0.2, 127.0.0.3, ...): etcd's auth is off, so tokens
// do not tell clients apart, except in TestProtectAuthTokens.

// protectedGateway runs a replica with protection p and returns a client of it, the parts
// behind it, and the reader of its metrics.
func protectedGateway(t *testing.T, ctx context.Context, p gateway.Protection) (*clientv3.Client, *parts, *sdkmetric.ManualReader) {
	t.Helper()
	parts := newParts(t, ctx)
	parts.runIngest(t, ctx)
	reader := sdkmetric.NewManualReader()
	_, cli := parts.runGateway(t, ctx, func(o *gateway.Options) {
		o.Protection = p
		o.Meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("")
	})
	return cli, parts, reader
}

// rejected reads the watchgate.gateway.rejected counter, by reason.
func rejected(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	return gateway.RejectedByReason(t, r)
}

// clientFrom returns a client of endpoint whose connections come from the loopback address ip.
func clientFrom(t *testing.T, endpoint, ip string) *clientv3.Client {
	t.Helper()
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return d.DialContext(ctx, "tcp", addr)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestProtectRateLimit runs clients past their rate at a rate so low that nothing refills
// during the test: the first Burst requests pass, the next is refused with etcd's
// too-many-requests error, and other clients are not affected.
func TestProtectRateLimit(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	cli, _, reader := protectedGateway(t, ctx, gateway.Protection{RequestsPerSecond: 0.001, Burst: 5})
	endpoint := cli.Endpoints()[0]
	alice, bob := clientFrom(t, endpoint, "127.0.0.2"), clientFrom(t, endpoint, "127.0.0.3")

	for i := range 5 {
		if _, err := alice.Get(ctx, "k"); err != nil {
			t.Fatalf("alice's request %d, within the burst: %v", i+1, err)
		}
	}
	if _, err := alice.Get(ctx, "k"); !errors.Is(err, rpctypes.ErrTooManyRequests) {
		t.Fatalf("alice's request past the burst: got %v, want %v", err, rpctypes.ErrTooManyRequests)
	}
	// A made-up token buys nothing while etcd's auth is off.
	token := metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, "QkXxRMhiubWPnmrZ.21")
	if _, err := alice.Get(token, "k"); !errors.Is(err, rpctypes.ErrTooManyRequests) {
		t.Fatalf("alice's request with a made-up token: got %v, want %v", err, rpctypes.ErrTooManyRequests)
	}
	// Opening a stream counts as a request.
	ws, err := pb.NewWatchClient(alice.ActiveConnection()).Watch(ctx)
	if err == nil {
		_, err = ws.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || rpctypes.ErrorDesc(err) != "etcdserver: too many requests" {
		t.Fatalf("alice's watch stream past the burst: got %v, want %v", err, rpctypes.ErrGRPCRequestTooManyRequests)
	}
	// A new connection from the same address does not start afresh.
	if _, err := clientFrom(t, endpoint, "127.0.0.2").Get(ctx, "k"); !errors.Is(err, rpctypes.ErrTooManyRequests) {
		t.Fatalf("alice's request on a new connection: got %v, want %v", err, rpctypes.ErrTooManyRequests)
	}

	// bob has an allowance of his own.
	for i := range 5 {
		if _, err := bob.Put(ctx, "k", fmt.Sprint(i)); err != nil {
			t.Fatalf("bob's request %d, alice refused: %v", i+1, err)
		}
	}
	if _, err := bob.Get(ctx, "k"); !errors.Is(err, rpctypes.ErrTooManyRequests) {
		t.Fatalf("bob's request past the burst: got %v, want %v", err, rpctypes.ErrTooManyRequests)
	}
	if diff := cmp.Diff(map[string]int64{"rate": 5}, rejected(t, reader)); diff != "" {
		t.Errorf("rejected (-want +got):\n%s", diff)
	}
}

// TestProtectRangeResponseBytes checks that a LIST bigger than MaxRangeResponseBytes is
// refused however it is answered (from the cache, from the response cache, by the member),
// that small reads and paged LISTs pass, and that refused expensive requests give their
// concurrency slot back.
func TestProtectRangeResponseBytes(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	cli, _, reader := protectedGateway(t, ctx, gateway.Protection{MaxRangeResponseBytes: 4 << 10, MaxConcurrentExpensive: 1})
	value := strings.Repeat("v", 512)
	for i := range 16 {
		if _, err := cli.Put(ctx, fmt.Sprintf("list/%02d", i), value); err != nil {
			t.Fatal(err)
		}
	}

	if resp, err := cli.Get(ctx, "list/00"); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("small GET: got %v, %v", resp, err)
	}
	if resp, err := cli.Get(ctx, "list/", clientv3.WithPrefix(), clientv3.WithLimit(4)); err != nil || len(resp.Kvs) != 4 {
		t.Fatalf("paged LIST: got %v, %v", resp, err)
	}
	token := metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, "QkXxRMhiubWPnmrZ.21") // passes through to the member
	for _, c := range []struct {
		name string
		ctx  context.Context
	}{{"LIST", ctx}, {"LIST again", ctx}, {"LIST with a token", token}} {
		_, err := cli.Get(c.ctx, "list/", clientv3.WithPrefix())
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "exceeds the limit of 4096 bytes; page it with limit") {
			t.Fatalf("%s: got %v, want ResourceExhausted with the limit", c.name, err)
		}
	}
	// A Txn's response is not capped, and the refused LISTs freed the one expensive slot.
	resp, err := cli.Txn(ctx).Then(clientv3.OpGet("list/", clientv3.WithPrefix())).Commit()
	if err != nil || len(resp.Responses[0].GetResponseRange().Kvs) != 16 {
		t.Fatalf("txn LIST: got %v, %v", resp, err)
	}
	if diff := cmp.Diff(map[string]int64{"response_bytes": 3}, rejected(t, reader)); diff != "" {
		t.Errorf("rejected (-want +got):\n%s", diff)
	}
}

// TestProtectOffByDefault checks that without Protection a client may go well past any of
// the limits the other tests set.
func TestProtectOffByDefault(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	cli, _, reader := protectedGateway(t, ctx, gateway.Protection{})
	value := strings.Repeat("v", 512)
	for i := range 16 {
		if _, err := cli.Put(ctx, fmt.Sprintf("list/%02d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if resp, err := cli.Get(ctx, "list/", clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 16 {
			t.Fatalf("LIST: got %v, %v", resp, err)
		}
	}
	if got := rejected(t, reader); len(got) != 0 {
		t.Errorf("rejected %v, want none", got)
	}
}

// rawConnFrom returns a plain gRPC connection to endpoint from the loopback address ip: unlike
// clientv3's, its calls are not retried (clientv3 retries a call refused for an invalid token,
// up to 100 times).
func rawConnFrom(t *testing.T, endpoint, ip string) *grpc.ClientConn {
	t.Helper()
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return d.DialContext(ctx, "tcp", addr)
	}
	conn, err := grpc.NewClient(strings.TrimPrefix(endpoint, "http://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestProtectAuthTokens runs the tier in front of a member with etcd's auth on. A made-up
// token, which etcd refuses, does not escape its address's allowance; a real user's token,
// once etcd has accepted it, gets an allowance of its own.
func TestProtectAuthTokens(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	parts := newParts(t, ctx)
	admin := parts.member // without credentials: auth is off until the last step
	testenv.EnableAuth(ctx, t, admin, testenv.Reader{Name: "alice", Password: "alice's secret", Key: "k"})
	// The replica serves no Auth service: clients authenticate with etcd itself.
	auth, err := admin.Authenticate(ctx, "alice", "alice's secret")
	if err != nil {
		t.Fatal(err)
	}
	// No ingest: it would need root's credentials, and every read here passes through.
	reader := sdkmetric.NewManualReader()
	_, cli := parts.runGateway(t, ctx, func(o *gateway.Options) {
		o.Protection = gateway.Protection{RequestsPerSecond: 0.001, Burst: 2}
		o.Meter = sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("")
	})

	// A watch from now takes a revision probe, which finds etcd's auth on (and refuses the
	// watch, which has no credentials): from then on, tokens may identify clients.
	ws, err := pb.NewWatchClient(cli.ActiveConnection()).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("k")}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := ws.Recv(); err != nil || !resp.Canceled {
		t.Fatalf("watch without credentials: got %v, %v; want it refused", resp, err)
	}

	kv := pb.NewKVClient(rawConnFrom(t, cli.Endpoints()[0], "127.0.0.2"))
	get := func(token string) error {
		c := ctx
		if token != "" {
			c = metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, token)
		}
		_, err := kv.Range(c, &pb.RangeRequest{Key: []byte("k")})
		return err
	}
	tooMany := func(err error) bool {
		return status.Code(err) == codes.ResourceExhausted && rpctypes.ErrorDesc(err) == "etcdserver: too many requests"
	}

	// alice's first read is charged to her address (2 left, then 1); etcd accepts her token.
	if err := get(auth.Token); err != nil {
		t.Fatalf("alice's first read: %v", err)
	}
	// Made-up tokens, from the same address: etcd refuses them, and they spend the address's
	// allowance, not fresh ones.
	if err := get("made.up.0"); status.Code(err) != codes.Unauthenticated || rpctypes.ErrorDesc(err) != "etcdserver: invalid auth token" {
		t.Fatalf("read with a made-up token: got %v, want etcd's %v", err, rpctypes.ErrGRPCInvalidAuthToken)
	}
	for _, token := range []string{"made.up.1", "made.up.0", ""} {
		if err := get(token); !tooMany(err) {
			t.Fatalf("read with token %q past the address's burst: got %v, want %v", token, err, rpctypes.ErrGRPCRequestTooManyRequests)
		}
	}
	// alice's token has an allowance of its own.
	for i := range 2 {
		if err := get(auth.Token); err != nil {
			t.Fatalf("alice's read %d, her address refused: %v", i+1, err)
		}
	}
	if err := get(auth.Token); !tooMany(err) {
		t.Fatalf("alice's read past her token's burst: got %v, want %v", err, rpctypes.ErrGRPCRequestTooManyRequests)
	}
	if diff := cmp.Diff(map[string]int64{"rate": 4}, rejected(t, reader)); diff != "" {
		t.Errorf("rejected (-want +got):\n%s", diff)
	}
}
