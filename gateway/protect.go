// protect.go is the abusive-client protection tier: per-client rate and concurrency limits and
// a cap on range response size, enforced by gRPC interceptors in front of every service, so one
// misbehaving client cannot starve the others of a replica (or of the member behind it).

package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash/maphash"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Protection limits what one client may ask of a replica, so that one careless client (a
// controller retrying in a tight loop, a LIST of the whole keyspace from every pod) cannot
// starve the others. Every limit is off by default: with the zero value the replica behaves
// exactly as etcd does. A request past a rate or concurrency limit fails as etcd refuses work
// when overloaded, with rpctypes.ErrGRPCRequestTooManyRequests (ResourceExhausted, "etcdserver:
// too many requests"), so clients need not learn a new error; an oversized range response
// fails with a message that says how to avoid it.
//
// The limits are per replica: a client spreading its requests over n replicas gets n times
// the allowance. They are enforced by the interceptors NewGRPCServer installs; a grpc.Server
// built elsewhere and passed to Register is not protected, and each server NewGRPCServer
// builds keeps its own per-client state.
//
// # Client identity
//
// Limits apply per client identity, the first of:
//   - "cn:<name>": the Common Name of the client's TLS certificate (the leaf of the verified
//     chain, else the first certificate presented);
//   - "token:<hash>": the etcd auth token (etcd's "token" metadata, or "authorization"), by a
//     hash of it, so the replica keeps no credentials: one session of an etcd user. Only while
//     etcd's auth is on (as the replica's revision probes last found it): with auth off etcd
//     ignores tokens, and a client could make up a new one, and with it a fresh allowance, for
//     every request;
//   - "addr:<ip>": the peer's IP address without the port, so opening more connections does
//     not buy more requests. (IPv6 addresses are not grouped by prefix: pods of one node may
//     share a /64.)
//
// A token is not grouped by the user name it may claim (a JWT's "username"): the replica
// cannot check its signature, and a forged token naming another user would spend that user's
// allowance. An etcd user with several sessions has an allowance per session; a new session
// takes an Authenticate call, itself limited by address. A certificate is trusted as far as
// the gRPC server's TLS configuration verifies it.
//
// # Memory
//
// Per-identity state is kept for at most 100,000 identities, the least recently seen dropped
// first, so a client spraying identities costs bounded memory. A dropped identity that returns
// starts afresh: a full burst, and none of its requests in flight counted.
type Protection struct {
	// RequestsPerSecond is the sustained rate of requests one client may make. Every unary
	// call counts one, and every stream opened (Watch, LeaseKeepAlive, RangeStream) counts
	// one when it opens; the messages on an open stream do not (MaxWatchersPerStream bounds
	// a watch stream's creates). 0: no limit. Default 0.
	RequestsPerSecond float64
	// Burst is how many requests a client may make at once, faster than RequestsPerSecond:
	// the size of its token bucket, which refills at RequestsPerSecond. Ignored without
	// RequestsPerSecond. Default: RequestsPerSecond rounded up, at least 1.
	Burst int
	// MaxConcurrentExpensive is how many expensive requests one client may have in flight at
	// once. Expensive is what can read an unbounded part of the keyspace: a Range or
	// RangeStream over more than one key (range_end set) with no limit or a limit over 1000,
	// and a Txn with such a Range in either branch, however deeply nested. Whatever they
	// return, they make the cache or the member walk the whole range. 0: no limit. Default 0.
	MaxConcurrentExpensive int
	// MaxRangeResponseBytes caps the encoded size of a unary Range response: a larger one is
	// not sent, and the call fails with ResourceExhausted and a message saying to page the
	// range with limit. It bounds what one request costs the network and the client's memory,
	// not the work of answering it (MaxConcurrentExpensive bounds that). RangeStream, which
	// sends its answer in chunks, and Txn responses are not capped. 0: no limit. Default 0.
	MaxRangeResponseBytes int64
}

func (p *Protection) validate() error {
	var errs []error
	if !(p.RequestsPerSecond >= 0) || math.IsInf(p.RequestsPerSecond, 0) {
		errs = append(errs, errors.New("gateway: Protection.RequestsPerSecond must be a finite number, 0 or more"))
	}
	if p.Burst < 0 {
		errs = append(errs, errors.New("gateway: Protection.Burst must be 0 or more"))
	}
	if p.MaxConcurrentExpensive < 0 {
		errs = append(errs, errors.New("gateway: Protection.MaxConcurrentExpensive must be 0 or more"))
	}
	if p.MaxRangeResponseBytes < 0 {
		errs = append(errs, errors.New("gateway: Protection.MaxRangeResponseBytes must be 0 or more"))
	}
	return errors.Join(errs...)
}

// on reports whether any limit is set.
func (p *Protection) on() bool {
	return p.RequestsPerSecond > 0 || p.MaxConcurrentExpensive > 0 || p.MaxRangeResponseBytes > 0
}

// protection returns the server options that enforce s.o.Protection: nil if it sets no limit,
// so an unprotected replica pays nothing for the tier.
func (s *Server) protection() []grpc.ServerOption {
	if !s.o.Protection.on() {
		return nil
	}
	logger := s.o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var rejected metric.Int64Counter = noop.Int64Counter{}
	if s.o.Meter != nil {
		c, err := s.o.Meter.Int64Counter("watchgate.gateway.rejected",
			metric.WithDescription("Requests refused by the client protection limits, by reason: rate (the client's request rate), concurrency (the client's expensive requests in flight), response_bytes (a range response over the size cap)."))
		if err != nil {
			logger.Warn("protection metric not recorded", "err", err)
		} else {
			rejected = c
		}
	}
	g := newGuard(s.o.Protection, maxClients, rejected, logger, time.Now, s.authOn.Load)
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(g.unary), grpc.ChainStreamInterceptor(g.stream)}
}

// The rejected metric's reasons.
var (
	reasonRate        = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", "rate")))
	reasonConcurrency = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", "concurrency")))
	reasonBytes       = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", "response_bytes")))
)

// guard enforces a Protection in front of every RPC. It is safe for concurrent use.
type guard struct {
	p        Protection
	clients  *clientTable // nil when neither rate nor concurrency is limited
	rejected metric.Int64Counter
	logger   *slog.Logger
	now      func() time.Time // the rate limiters' clock
	authOn   func() bool      // whether etcd's auth is on, so that tokens identify clients
}

// newGuard returns a guard enforcing p, keeping state for at most size identities.
func newGuard(p Protection, size int, rejected metric.Int64Counter, logger *slog.Logger, now func() time.Time, authOn func() bool) *guard {
	g := &guard{p: p, rejected: rejected, logger: logger, now: now, authOn: authOn}
	if p.RequestsPerSecond > 0 || p.MaxConcurrentExpensive > 0 {
		burst := p.Burst
		if burst == 0 {
			burst = int(max(1, min(math.Ceil(p.RequestsPerSecond), math.MaxInt32)))
		}
		g.clients = newClientTable(size, func() *client {
			c := &client{}
			if p.RequestsPerSecond > 0 {
				c.limiter = rate.NewLimiter(rate.Limit(p.RequestsPerSecond), burst)
			}
			return c
		})
	}
	return g
}

// unary is the unary interceptor: rate, then concurrency, then the response's size.
func (g *guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if g.clients != nil {
		id := identity(ctx, g.authOn())
		c := g.clients.get(id)
		if !g.allow(ctx, c, id, info.FullMethod) {
			return nil, rpctypes.ErrGRPCRequestTooManyRequests
		}
		if g.p.MaxConcurrentExpensive > 0 && expensive(req) {
			if !g.acquire(ctx, c, id, info.FullMethod) {
				return nil, rpctypes.ErrGRPCRequestTooManyRequests
			}
			defer c.expensive.Add(-1)
		}
	}
	resp, err := handler(ctx, req)
	if r, ok := resp.(*pb.RangeResponse); ok && err == nil && g.p.MaxRangeResponseBytes > 0 {
		if n := int64(proto.Size(r)); n > g.p.MaxRangeResponseBytes {
			g.reject(ctx, reasonBytes, "response_bytes", identity(ctx, g.authOn()), info.FullMethod)
			return nil, status.Errorf(codes.ResourceExhausted,
				"watchgate: range response of %d bytes exceeds the limit of %d bytes; page it with limit", n, g.p.MaxRangeResponseBytes)
		}
	}
	return resp, err
}

// stream is the stream interceptor: opening a stream counts against the rate, and a
// server-streaming call (RangeStream) whose request is expensive holds a concurrency slot
// until it ends.
func (g *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if g.clients == nil {
		return handler(srv, ss)
	}
	ctx := ss.Context()
	id := identity(ctx, g.authOn())
	c := g.clients.get(id)
	if !g.allow(ctx, c, id, info.FullMethod) {
		return rpctypes.ErrGRPCRequestTooManyRequests
	}
	if g.p.MaxConcurrentExpensive == 0 || info.IsClientStream {
		return handler(srv, ss)
	}
	gs := &guardedStream{ServerStream: ss, g: g, c: c, id: id, method: info.FullMethod}
	defer func() {
		if gs.held {
			c.expensive.Add(-1)
		}
	}()
	return handler(srv, gs)
}

// guardedStream checks the request of a server-streaming call, its first and only message,
// as the handler reads it. It is used by the handler's goroutine only.
type guardedStream struct {
	grpc.ServerStream
	g          *guard
	c          *client
	id, method string
	checked    bool // the request has been read
	held       bool // the call holds one of c's expensive slots
}

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil || s.checked {
		return err
	}
	s.checked = true
	if !expensive(m) {
		return nil
	}
	if !s.g.acquire(s.Context(), s.c, s.id, s.method) {
		return rpctypes.ErrGRPCRequestTooManyRequests
	}
	s.held = true
	return nil
}

// allow takes a token from c's bucket, reporting false (and counting the refusal) if it is
// empty.
func (g *guard) allow(ctx context.Context, c *client, id, method string) bool {
	if c.limiter == nil || c.limiter.AllowN(g.now(), 1) {
		return true
	}
	g.reject(ctx, reasonRate, "rate", id, method)
	return false
}

// acquire takes one of c's expensive slots, reporting false (and counting the refusal) if
// all are in use. The caller gives it back with c.expensive.Add(-1).
func (g *guard) acquire(ctx context.Context, c *client, id, method string) bool {
	if c.expensive.Add(1) <= int64(g.p.MaxConcurrentExpensive) {
		return true
	}
	c.expensive.Add(-1)
	g.reject(ctx, reasonConcurrency, "concurrency", id, method)
	return false
}

func (g *guard) reject(ctx context.Context, reason metric.AddOption, name, id, method string) {
	g.rejected.Add(ctx, 1, reason)
	g.logger.Debug("request refused by client protection", "reason", name, "client", id, "method", method)
}

// expensiveRangeLimit is the largest limit of a multi-key range that is not expensive.
const expensiveRangeLimit = 1000

// expensive reports whether req is an expensive request (see Protection).
func expensive(req any) bool {
	switch r := req.(type) {
	case *pb.RangeRequest:
		return expensiveRange(r)
	case *pb.TxnRequest:
		return expensiveTxn(r)
	}
	return false
}

func expensiveRange(r *pb.RangeRequest) bool {
	return len(r.RangeEnd) > 0 && (r.Limit <= 0 || r.Limit > expensiveRangeLimit)
}

// expensiveTxn looks in both branches: which one runs is only known when it runs.
func expensiveTxn(t *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{t.Success, t.Failure} {
		for _, op := range ops {
			if r := op.GetRequestRange(); r != nil && expensiveRange(r) {
				return true
			}
			if t := op.GetRequestTxn(); t != nil && expensiveTxn(t) {
				return true
			}
		}
	}
	return false
}

// identity names the client of the call ctx (see Protection); tokens tells whether etcd's auth
// is on, so that tokens identify clients.
func identity(ctx context.Context, tokens bool) string {
	p, _ := peer.FromContext(ctx)
	if p != nil {
		if cn := certName(p.AuthInfo); cn != "" {
			return "cn:" + bounded(cn)
		}
	}
	if tokens {
		if tok := authToken(ctx); tok != "" {
			return "token:" + digest(tok)
		}
	}
	if p != nil && p.Addr != nil {
		return "addr:" + bounded(hostOf(p.Addr))
	}
	return "unknown"
}

// certName is the Common Name of the TLS client certificate, if any: the leaf of the first
// verified chain, else the first certificate presented.
func certName(ai credentials.AuthInfo) string {
	info, ok := ai.(credentials.TLSInfo)
	if !ok {
		return ""
	}
	st := info.State
	if len(st.VerifiedChains) > 0 && len(st.VerifiedChains[0]) > 0 {
		return st.VerifiedChains[0][0].Subject.CommonName
	}
	if len(st.PeerCertificates) > 0 {
		return st.PeerCertificates[0].Subject.CommonName
	}
	return ""
}

// authToken is the call's etcd auth token, found where etcd looks for it.
func authToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(rpctypes.TokenFieldNameGRPC)
	if len(v) == 0 {
		v = md.Get(rpctypes.TokenFieldNameSwagger)
	}
	if len(v) == 0 {
		return ""
	}
	return strings.TrimPrefix(v[0], "Bearer ")
}

// hostOf is addr's IP address (IPv4-mapped IPv6 as IPv4), or addr as a whole if it has none.
func hostOf(addr net.Addr) string {
	var ap netip.AddrPort
	if tcp, ok := addr.(*net.TCPAddr); ok {
		ap = tcp.AddrPort()
	} else if parsed, err := netip.ParseAddrPort(addr.String()); err == nil {
		ap = parsed
	}
	if !ap.Addr().IsValid() {
		return addr.String()
	}
	return ap.Addr().Unmap().WithZone("").String()
}

// maxNameBytes bounds the names kept as identities; longer ones are kept as a digest.
const maxNameBytes = 128

func bounded(name string) string {
	if len(name) <= maxNameBytes {
		return name
	}
	return "#" + digest(name)
}

// digest is a short hash of s, for names too long (or too secret) to keep.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}

// maxClients bounds the identities a replica keeps state for.
const maxClients = 100_000

// clientShards splits the client table so concurrent requests rarely wait on one lock.
const clientShards = 16

// clientTable is the per-identity state, at most size identities, least recently used
// dropped first. It is safe for concurrent use.
type clientTable struct {
	seed      maphash.Seed
	newClient func() *client
	shards    [clientShards]clientShard
}

type clientShard struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, *client] // guarded by mu
}

// client is one identity's state.
type client struct {
	limiter   *rate.Limiter // the rate limit's token bucket; nil without one
	expensive atomic.Int64  // expensive requests in flight
}

func newClientTable(size int, newClient func() *client) *clientTable {
	t := &clientTable{seed: maphash.MakeSeed(), newClient: newClient}
	for i := range t.shards {
		lru, err := simplelru.NewLRU[string, *client](max(1, size/clientShards), nil)
		if err != nil {
			panic(err) // only for a size under 1
		}
		t.shards[i].lru = lru
	}
	return t
}

// get returns id's state, creating it if the table has none.
func (t *clientTable) get(id string) *client {
	sh := &t.shards[maphash.String(t.seed, id)%clientShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c, ok := sh.lru.Get(id)
	if !ok {
		c = t.newClient()
		sh.lru.Add(id, c)
	}
	return c
}

// len is how many identities the table holds.
func (t *clientTable) len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += sh.lru.Len()
		sh.mu.Unlock()
	}
	return n
}
