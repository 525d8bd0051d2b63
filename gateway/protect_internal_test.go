package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The guard's interceptors called directly, with handlers that block until the test lets them
// go: what is in flight is then known exactly, and the rate limiter's clock is an input.

const (
	protRangeMethod       = "/etcdserverpb.KV/Range"
	protTxnMethod         = "/etcdserverpb.KV/Txn"
	protRangeStreamMethod = "/etcdserverpb.KV/RangeStream"
	protWatchMethod       = "/etcdserverpb.Watch/Watch"
)

// testGuard returns a guard enforcing p on a clock the test sets, with etcd's auth off, and
// the reader of its rejected metric.
func testGuard(t *testing.T, p Protection, now func() time.Time) (*guard, *sdkmetric.ManualReader) {
	t.Helper()
	return testGuardAuth(t, p, now, func() bool { return false })
}

// testGuardAuth is testGuard with etcd's auth as authOn tells.
func testGuardAuth(t *testing.T, p Protection, now func() time.Time, authOn func() bool) (*guard, *sdkmetric.ManualReader) {
	t.Helper()
	if err := p.validate(); err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	rejected, err := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)).Meter("").Int64Counter("watchgate.gateway.rejected")
	if err != nil {
		t.Fatal(err)
	}
	return newGuard(p, maxClients, rejected, slog.New(slog.DiscardHandler), now, authOn), reader
}

// rejectedByReason reads the rejected counter, by reason.
func rejectedByReason(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "watchgate.gateway.rejected" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				reason, _ := dp.Attributes.Value("reason")
				got[reason.AsString()] += dp.Value
			}
		}
	}
	return got
}

// from is a call context from the client at ip.
func protFrom(ctx context.Context, ip string) context.Context {
	return peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}})
}

func protOK(context.Context, any) (any, error) { return &pb.RangeResponse{}, nil }

// protStream is a server-streaming call whose single request is req.
type protStream struct {
	grpc.ServerStream // nil: only Context and RecvMsg are called
	ctx               context.Context
	req               proto.Message
}

func (s *protStream) Context() context.Context { return s.ctx }
func (s *protStream) RecvMsg(m any) error {
	proto.Merge(m.(proto.Message), s.req)
	return nil
}

// protRecvRange is a RangeStream handler: it reads the request and returns.
func protRecvRange(_ any, ss grpc.ServerStream) error { return ss.RecvMsg(&pb.RangeRequest{}) }

func protRangeStream(g *guard, ctx context.Context, r *pb.RangeRequest, handler grpc.StreamHandler) error {
	return g.stream(nil, &protStream{ctx: ctx, req: r}, &grpc.StreamServerInfo{FullMethod: protRangeStreamMethod, IsServerStream: true}, handler)
}

func TestProtectRateLimitRefills(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	g, reader := testGuard(t, Protection{RequestsPerSecond: 1, Burst: 2}, func() time.Time { return now })
	a, b := protFrom(t.Context(), "10.0.0.1"), protFrom(t.Context(), "10.0.0.2")
	get := &pb.RangeRequest{Key: []byte("k")}
	call := func(ctx context.Context) error {
		_, err := g.unary(ctx, get, &grpc.UnaryServerInfo{FullMethod: protRangeMethod}, protOK)
		return err
	}
	open := func(ctx context.Context) (opened bool, err error) {
		err = g.stream(nil, &protStream{ctx: ctx}, &grpc.StreamServerInfo{FullMethod: protWatchMethod, IsClientStream: true, IsServerStream: true},
			func(any, grpc.ServerStream) error { opened = true; return nil })
		return opened, err
	}

	for i := range 2 {
		if err := call(a); err != nil {
			t.Fatalf("request %d within the burst: %v", i+1, err)
		}
	}
	if err := call(a); !errors.Is(err, rpctypes.ErrGRPCRequestTooManyRequests) {
		t.Fatalf("request past the burst: got %v, want %v", err, rpctypes.ErrGRPCRequestTooManyRequests)
	}
	if opened, err := open(a); opened || !errors.Is(err, rpctypes.ErrGRPCRequestTooManyRequests) {
		t.Fatalf("stream past the burst: opened %v, err %v; want refused", opened, err)
	}
	if err := call(b); err != nil {
		t.Fatalf("another client: %v", err)
	}

	now = now.Add(time.Second) // one token back
	if opened, err := open(a); !opened || err != nil {
		t.Fatalf("stream after a second: opened %v, err %v; want opened", opened, err)
	}
	if err := call(a); !errors.Is(err, rpctypes.ErrGRPCRequestTooManyRequests) {
		t.Fatalf("second request after a second: got %v, want refused", err)
	}
	if diff := cmp.Diff(map[string]int64{"rate": 3}, rejectedByReason(t, reader)); diff != "" {
		t.Errorf("rejected (-want +got):\n%s", diff)
	}
}

func TestProtectRateLimitDefaultBurst(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	g, _ := testGuard(t, Protection{RequestsPerSecond: 2.5}, func() time.Time { return now })
	ctx := protFrom(t.Context(), "10.0.0.1")
	allowed := 0
	for range 10 {
		if _, err := g.unary(ctx, &pb.PutRequest{}, &grpc.UnaryServerInfo{FullMethod: "/etcdserverpb.KV/Put"}, protOK); err == nil {
			allowed++
		}
	}
	if allowed != 3 {
		t.Errorf("allowed %d requests at once, want 3 (2.5/s rounded up)", allowed)
	}
}

func TestProtectConcurrentExpensive(t *testing.T) {
	g, reader := testGuard(t, Protection{MaxConcurrentExpensive: 2}, time.Now)
	a, b := protFrom(t.Context(), "10.0.0.1"), protFrom(t.Context(), "10.0.0.2")
	list := &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b")}
	nested := &pb.TxnRequest{Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{
		Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: list}}}}}}}}
	unary := func(ctx context.Context, req any) error {
		_, err := g.unary(ctx, req, &grpc.UnaryServerInfo{FullMethod: protTxnMethod}, protOK)
		return err
	}

	// Client a holds two expensive requests in flight: a unary Range and a RangeStream.
	entered, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() {
		_, err := g.unary(a, list, &grpc.UnaryServerInfo{FullMethod: protRangeMethod}, func(context.Context, any) (any, error) {
			entered <- struct{}{}
			<-release
			return &pb.RangeResponse{}, nil
		})
		errs <- err
	})
	wg.Go(func() {
		errs <- protRangeStream(g, a, list, func(srv any, ss grpc.ServerStream) error {
			if err := protRecvRange(srv, ss); err != nil {
				return err
			}
			entered <- struct{}{}
			<-release
			return nil
		})
	})
	<-entered
	<-entered

	refused := map[string]error{
		"range":         unary(a, list),
		"limited range": unary(a, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b"), Limit: 1}),
		"nested txn":    unary(a, nested),
		"range stream":  protRangeStream(g, a, list, protRecvRange),
	}
	for name, err := range refused {
		if !errors.Is(err, rpctypes.ErrGRPCRequestTooManyRequests) {
			t.Errorf("%s past the limit: got %v, want %v", name, err, rpctypes.ErrGRPCRequestTooManyRequests)
		}
	}
	allowed := map[string]error{
		"single key":              unary(a, &pb.RangeRequest{Key: []byte("a")}),
		"single-key stream":       protRangeStream(g, a, &pb.RangeRequest{Key: []byte("a")}, protRecvRange),
		"another client":          unary(b, list),
		"another client's stream": protRangeStream(g, b, list, protRecvRange),
	}
	for name, err := range allowed {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("request held in flight: %v", err)
		}
	}
	// Their slots are free again.
	for range 2 {
		if err := unary(a, nested); err != nil {
			t.Errorf("after the requests in flight ended: %v", err)
		}
	}
	if diff := cmp.Diff(map[string]int64{"concurrency": 4}, rejectedByReason(t, reader)); diff != "" {
		t.Errorf("rejected (-want +got):\n%s", diff)
	}
}

func TestProtectExpensive(t *testing.T) {
	rng := func(end string, limit int64) *pb.RangeRequest {
		return &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte(end), Limit: limit}
	}
	rangeOp := func(r *pb.RangeRequest) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
	}
	txnOp := func(t *pb.TxnRequest) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}
	}
	put := &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a")}}}
	for _, tc := range []struct {
		name string
		req  any
		want bool
	}{
		{"single key", rng("", 0), false},
		{"range without limit", rng("b", 0), true},
		{"whole keyspace", &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}, true},
		// etcd and the cache walk the whole range to count it, whatever the limit.
		{"range with limit 1", rng("b", 1), true},
		{"range with limit 1000", rng("b", 1000), true},
		{"range with limit 1001", rng("b", 1001), true},
		{"range with negative limit", rng("b", -1), true},
		{"count-only range", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b"), CountOnly: true}, true},
		{"keys from a key on", rng("\x00", 1), true},
		{"txn of puts and gets", &pb.TxnRequest{Success: []*pb.RequestOp{put, rangeOp(rng("", 0))}}, false},
		{"txn ranging on success", &pb.TxnRequest{Success: []*pb.RequestOp{put, rangeOp(rng("b", 0))}}, true},
		{"txn ranging on failure", &pb.TxnRequest{Failure: []*pb.RequestOp{rangeOp(rng("b", 0))}}, true},
		{"nested txn ranging", &pb.TxnRequest{Success: []*pb.RequestOp{txnOp(&pb.TxnRequest{
			Failure: []*pb.RequestOp{txnOp(&pb.TxnRequest{Success: []*pb.RequestOp{rangeOp(rng("b", 5000))}})}})}}, true},
		{"nested txn of a limited range", &pb.TxnRequest{Success: []*pb.RequestOp{txnOp(&pb.TxnRequest{
			Success: []*pb.RequestOp{rangeOp(rng("b", 10))}})}}, true},
		{"nested txn of gets", &pb.TxnRequest{Success: []*pb.RequestOp{txnOp(&pb.TxnRequest{
			Failure: []*pb.RequestOp{rangeOp(rng("", 10)), put}})}}, false},
		{"put", &pb.PutRequest{Key: []byte("a")}, false},
		{"delete range", &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte("b")}, false},
	} {
		if got := expensive(tc.req); got != tc.want {
			t.Errorf("%s: expensive = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestProtectRangeResponseBytesUnit(t *testing.T) {
	g, reader := testGuard(t, Protection{MaxRangeResponseBytes: 100}, time.Now)
	small := &pb.RangeResponse{Kvs: nil, Count: 1}
	big := &pb.RangeResponse{Count: 1}
	big.ProtoReflect().SetUnknown(make([]byte, 200)) // as the response cache sends its bodies
	respond := func(resp *pb.RangeResponse) grpc.UnaryHandler {
		return func(context.Context, any) (any, error) { return resp, nil }
	}
	info := &grpc.UnaryServerInfo{FullMethod: protRangeMethod}
	if resp, err := g.unary(t.Context(), &pb.RangeRequest{}, info, respond(small)); err != nil || resp != small {
		t.Errorf("small response: got %v, %v", resp, err)
	}
	_, err := g.unary(t.Context(), &pb.RangeRequest{}, info, respond(big))
	if want := fmt.Sprintf("watchgate: range response of %d bytes exceeds the limit of 100 bytes; page it with limit", proto.Size(big)); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("big response: got %v, want %q", err, want)
	}
	if diff := cmp.Diff(map[string]int64{"response_bytes": 1}, rejectedByReason(t, reader)); diff != "" {
		t.Errorf("rejected (-want +got):\n%s", diff)
	}
}

// protCert returns a certificate for common name cn.
func protCert(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// jwt is an unsigned JWT with payload claims.
func testJWT(claims string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc([]byte(claims)) + "." + enc([]byte("not a signature"))
}

func TestIdentity(t *testing.T) {
	ctx := t.Context()
	addr := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 51234}
	withPeer := func(p *peer.Peer) context.Context { return peer.NewContext(ctx, p) }
	withTLS := func(st tls.ConnectionState) context.Context {
		return withPeer(&peer.Peer{Addr: addr, AuthInfo: credentials.TLSInfo{State: st}})
	}
	withMD := func(c context.Context, kv ...string) context.Context {
		return metadata.NewIncomingContext(c, metadata.Pairs(kv...))
	}
	alice, mallory := protCert(t, "alice"), protCert(t, "mallory")
	const tok, unknownTok = "QkXxRMhiubWPnmrZ.21", "made.up"
	jwt := testJWT(`{"username":"bob"}`)
	known := func(d string) bool { return d == digest(tok) || d == digest(jwt) }

	for _, tc := range []struct {
		name        string
		ctx         context.Context
		want        string
		wantPending string
	}{
		{"address", withPeer(&peer.Peer{Addr: addr}), "addr:192.0.2.7", ""},
		{"IPv4-mapped IPv6 address", withPeer(&peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 1}}), "addr:192.0.2.7", ""},
		{"IPv6 address", withPeer(&peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1}}), "addr:2001:db8::1", ""},
		{"unix socket", withPeer(&peer.Peer{Addr: &net.UnixAddr{Name: "/run/watchgate.sock", Net: "unix"}}), "addr:/run/watchgate.sock", ""},
		{"no peer", ctx, "unknown", ""},
		{"verified certificate", withTLS(tls.ConnectionState{PeerCertificates: []*x509.Certificate{alice},
			VerifiedChains: [][]*x509.Certificate{{alice}}}), "cn:alice", ""},
		{"verified chain, not what was presented first", withTLS(tls.ConnectionState{PeerCertificates: []*x509.Certificate{mallory},
			VerifiedChains: [][]*x509.Certificate{{alice}}}), "cn:alice", ""},
		// Anyone can present a certificate naming anyone: unverified, it names no one.
		{"unverified certificate", withTLS(tls.ConnectionState{PeerCertificates: []*x509.Certificate{alice}}), "addr:192.0.2.7", ""},
		{"unverified certificate and a token", withMD(withTLS(tls.ConnectionState{PeerCertificates: []*x509.Certificate{alice}}),
			"token", tok), "token:" + digest(tok), ""},
		{"TLS without a client certificate", withTLS(tls.ConnectionState{}), "addr:192.0.2.7", ""},
		{"verified certificate over token", withMD(withTLS(tls.ConnectionState{PeerCertificates: []*x509.Certificate{alice},
			VerifiedChains: [][]*x509.Certificate{{alice}}}), "token", tok), "cn:alice", ""},
		{"known token", withMD(withPeer(&peer.Peer{Addr: addr}), "token", tok), "token:" + digest(tok), ""},
		{"known bearer token", withMD(ctx, "authorization", "Bearer "+tok), "token:" + digest(tok), ""},
		{"token before authorization", withMD(ctx, "token", tok, "authorization", "Bearer "+unknownTok), "token:" + digest(tok), ""},
		// A JWT's claims are not trusted: the token identifies the client, not its user name.
		{"known JWT", withMD(withPeer(&peer.Peer{Addr: addr}), "token", jwt), "token:" + digest(jwt), ""},
		// Until etcd has accepted a token, its calls are their address's.
		{"unknown token", withMD(withPeer(&peer.Peer{Addr: addr}), "token", unknownTok), "addr:192.0.2.7", digest(unknownTok)},
		{"unknown bearer token", withMD(withPeer(&peer.Peer{Addr: addr}), "authorization", "Bearer "+unknownTok), "addr:192.0.2.7", digest(unknownTok)},
		{"empty token", withMD(withPeer(&peer.Peer{Addr: addr}), "token", ""), "addr:192.0.2.7", ""},
	} {
		id, pending := identity(tc.ctx, known)
		if id != tc.want || pending != tc.wantPending {
			t.Errorf("%s: identity = %q, %q; want %q, %q", tc.name, id, pending, tc.want, tc.wantPending)
		}
	}
	// With etcd's auth off, tokens mean nothing to etcd, and would buy a made-up allowance each.
	c := withMD(withPeer(&peer.Peer{Addr: addr}), "token", tok)
	if id, pending := identity(c, nil); id != "addr:192.0.2.7" || pending != "" {
		t.Errorf("token with auth off: identity = %q, %q; want %q, \"\"", id, pending, "addr:192.0.2.7")
	}
}

// TestIdentityKeepsNoToken checks that tokens, which are credentials, are not kept as they are.
func TestIdentityKeepsNoToken(t *testing.T) {
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("token", "QkXxRMhiubWPnmrZ.21"))
	for _, known := range []bool{false, true} {
		id, pending := identity(ctx, func(string) bool { return known })
		if strings.Contains(id+pending, "QkXxRMhiubWPnmrZ") {
			t.Errorf("identity %q, %q holds the token", id, pending)
		}
	}
}

// TestProtectKnownTokens checks which calls make a token known: only a successful unary KV
// call while etcd's auth is on; and that known tokens are forgotten when auth is off.
func TestProtectKnownTokens(t *testing.T) {
	var authOn atomic.Bool
	authOn.Store(true)
	g, _ := testGuardAuth(t, Protection{RequestsPerSecond: 1000}, time.Now, authOn.Load)
	from := protFrom(t.Context(), "10.0.0.1")
	withToken := func(tok string) context.Context {
		return metadata.NewIncomingContext(from, metadata.Pairs(rpctypes.TokenFieldNameGRPC, tok))
	}
	answer := func(err error) grpc.UnaryHandler {
		return func(context.Context, any) (any, error) {
			if err != nil {
				return nil, err
			}
			return &pb.RangeResponse{}, nil
		}
	}
	call := func(tok, method string, err error) {
		t.Helper()
		if _, got := g.unary(withToken(tok), &pb.RangeRequest{Key: []byte("k")}, &grpc.UnaryServerInfo{FullMethod: method}, answer(err)); got != err {
			t.Fatalf("%s with token %q: got %v, want the handler's %v", method, tok, got, err)
		}
	}
	identified := func(tok string) string {
		id, _ := g.identify(withToken(tok))
		return id
	}
	const byAddr = "addr:10.0.0.1"

	// Calls that teach nothing: refused by etcd's auth, failed before etcd may have checked
	// the token (a made-up token could otherwise be taught by a call that times out), or
	// answered without etcd checking the token.
	for _, tc := range []struct {
		name   string
		method string
		err    error
	}{
		{"user empty", protRangeMethod, rpctypes.ErrGRPCUserEmpty},
		{"invalid token", protRangeMethod, rpctypes.ErrGRPCInvalidAuthToken},
		{"permission denied", protTxnMethod, rpctypes.ErrGRPCPermissionDenied},
		{"old auth revision", protRangeMethod, rpctypes.ErrGRPCAuthOldRevision},
		{"auth not enabled", protRangeMethod, rpctypes.ErrGRPCAuthNotEnabled},
		{"user not found", protRangeMethod, rpctypes.ErrGRPCUserNotFound},
		{"unauthenticated", protRangeMethod, status.Error(codes.Unauthenticated, "go away")},
		{"timeout", protRangeMethod, rpctypes.ErrGRPCTimeout},
		{"deadline", protRangeMethod, status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error())},
		{"canceled", protRangeMethod, context.Canceled},
		{"etcd too busy", "/etcdserverpb.KV/Put", rpctypes.ErrGRPCRequestTooManyRequests},
		{"member list", "/etcdserverpb.Cluster/MemberList", nil},
		{"lease grant", "/etcdserverpb.Lease/LeaseGrant", nil},
		{"status", "/etcdserverpb.Maintenance/Status", nil},
	} {
		tok := "made-up " + tc.name
		call(tok, tc.method, tc.err)
		if id := identified(tok); id != byAddr {
			t.Errorf("after %s: token identified as %q, want %q", tc.name, id, byAddr)
		}
	}
	// Streams teach nothing: the replica serves watches itself.
	if err := g.stream(nil, &protStream{ctx: withToken("made-up watch")}, &grpc.StreamServerInfo{FullMethod: protWatchMethod, IsClientStream: true, IsServerStream: true},
		func(any, grpc.ServerStream) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if id := identified("made-up watch"); id != byAddr {
		t.Errorf("after a watch: token identified as %q, want %q", id, byAddr)
	}
	// Nor do calls while etcd's auth is off: etcd then accepts any token.
	authOn.Store(false)
	call("made-up with auth off", protRangeMethod, nil)
	authOn.Store(true)
	if id := identified("made-up with auth off"); id != byAddr {
		t.Errorf("after a call with auth off: token identified as %q, want %q", id, byAddr)
	}

	// A successful KV call makes its token known.
	for _, m := range []string{protRangeMethod, protTxnMethod, "/etcdserverpb.KV/Put", "/etcdserverpb.KV/DeleteRange", "/etcdserverpb.KV/Compact"} {
		tok := "accepted by " + m
		call(tok, m, nil)
		if id, want := identified(tok), "token:"+digest(tok); id != want {
			t.Errorf("after a successful %s: token identified as %q, want %q", m, id, want)
		}
	}
	// Known tokens are forgotten when etcd's auth is found off, not merely unused.
	tok := "accepted by " + protRangeMethod
	authOn.Store(false)
	if id := identified(tok); id != byAddr {
		t.Errorf("auth off: known token identified as %q, want %q", id, byAddr)
	}
	authOn.Store(true)
	if id := identified(tok); id != byAddr {
		t.Errorf("auth on again: token identified as %q, want %q until etcd accepts it again", id, byAddr)
	}
	call(tok, protRangeMethod, nil)
	if id, want := identified(tok), "token:"+digest(tok); id != want {
		t.Errorf("accepted again: token identified as %q, want %q", id, want)
	}
}

// TestProtectMadeUpTokens checks that tokens buy an allowance only once etcd accepted them: a
// made-up token's calls, which etcd refuses, spend their address's allowance; an accepted
// token gets its own.
func TestProtectMadeUpTokens(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	g, reader := testGuardAuth(t, Protection{RequestsPerSecond: 0.001, Burst: 2}, func() time.Time { return now }, func() bool { return true })
	from := protFrom(t.Context(), "10.0.0.1")
	good := "QkXxRMhiubWPnmrZ.21"
	etcd := func(ctx context.Context, _ any) (any, error) { // accepts good only
		if authToken(ctx) != good {
			return nil, rpctypes.ErrGRPCInvalidAuthToken
		}
		return &pb.RangeResponse{}, nil
	}
	get := func(tok string) error {
		ctx := from
		if tok != "" {
			ctx = metadata.NewIncomingContext(from, metadata.Pairs(rpctypes.TokenFieldNameGRPC, tok))
		}
		_, err := g.unary(ctx, &pb.RangeRequest{Key: []byte("k")}, &grpc.UnaryServerInfo{FullMethod: protRangeMethod}, etcd)
		return err
	}

	if err := get(good); err != nil { // the address's first request; good is known after it
		t.Fatalf("first request with the good token: %v", err)
	}
	if err := get("made-up-1"); !errors.Is(err, rpctypes.ErrGRPCInvalidAuthToken) { // the address's second
		t.Fatalf("made-up token within the address's burst: got %v, want etcd's %v", err, rpctypes.ErrGRPCInvalidAuthToken)
	}
	for _, tok := range []string{"made-up-2", "made-up-1", ""} {
		if err := get(tok); !errors.Is(err, rpctypes.ErrGRPCRequestTooManyRequests) {
			t.Fatalf("token %q past the address's burst: got %v, want %v", tok, err, rpctypes.ErrGRPCRequestTooManyRequests)
		}
	}
	for i := range 2 {
		if err := get(good); err != nil {
			t.Fatalf("good token's request %d, within its own burst: %v", i+1, err)
		}
	}
	if err := get(good); !errors.Is(err, rpctypes.ErrGRPCRequestTooManyRequests) {
		t.Fatalf("good token past its own burst: got %v, want %v", err, rpctypes.ErrGRPCRequestTooManyRequests)
	}
	if diff := cmp.Diff(map[string]int64{"rate": 4}, rejectedByReason(t, reader)); diff != "" {
		t.Errorf("rejected (-want +got):\n%s", diff)
	}
}

func TestProtectTablesBounded(t *testing.T) {
	const size = 64
	tab := newLRUTable[*client](size)
	newClient := func() *client { return &client{} }
	kept := tab.get("kept", newClient)
	for i := range 10 * size {
		tab.get(fmt.Sprint("sprayed-", i), newClient)
		if got := tab.get("kept", newClient); got != kept {
			t.Fatalf("an identity in use was dropped after %d others", i+1)
		}
	}
	if n := tab.len(); n > size {
		t.Errorf("table holds %d identities, want at most %d", n, size)
	}

	tokens := &knownTokens{set: newLRUTable[struct{}](size)}
	tokens.add("kept")
	for i := range 10 * size {
		tokens.add(fmt.Sprint("sprayed-", i))
		if !tokens.known("kept") {
			t.Fatalf("a token in use was forgotten after %d others", i+1)
		}
	}
	if n := tokens.set.len(); n > size {
		t.Errorf("known tokens: %d, want at most %d", n, size)
	}
	tokens.forgetAll()
	if n := tokens.set.len(); n != 0 || tokens.known("kept") {
		t.Errorf("after forgetAll: %d known tokens, want none", n)
	}
}

func TestProtectValidate(t *testing.T) {
	for _, tc := range []struct {
		p       Protection
		wantErr string
	}{
		{Protection{}, ""},
		{Protection{RequestsPerSecond: 0.001, Burst: 5, MaxConcurrentExpensive: 1, MaxRangeResponseBytes: 1}, ""},
		{Protection{RequestsPerSecond: -1}, "RequestsPerSecond"},
		{Protection{RequestsPerSecond: math.NaN()}, "RequestsPerSecond"},
		{Protection{RequestsPerSecond: math.Inf(1)}, "RequestsPerSecond"},
		{Protection{Burst: -1}, "Burst"},
		{Protection{MaxConcurrentExpensive: -1}, "MaxConcurrentExpensive"},
		{Protection{MaxRangeResponseBytes: -1}, "MaxRangeResponseBytes"},
	} {
		err := tc.p.validate()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%+v: unexpected error %v", tc.p, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%+v: got error %v, want one naming %s", tc.p, err, tc.wantErr)
		}
	}
}

// TestProtectionOff checks that a replica without limits installs no interceptors.
func TestProtectionOff(t *testing.T) {
	for _, tc := range []struct {
		p    Protection
		want int
	}{
		{Protection{}, 0},
		{Protection{Burst: 10}, 0},
		{Protection{RequestsPerSecond: 1}, 2},
		{Protection{MaxConcurrentExpensive: 1}, 2},
		{Protection{MaxRangeResponseBytes: 1}, 2},
	} {
		s := &Server{o: Options{Protection: tc.p}}
		if got := len(s.protection()); got != tc.want {
			t.Errorf("%+v: %d server options, want %d", tc.p, got, tc.want)
		}
	}
}
