// protect.go is the abusive-client protection tier: per-client rate and concurrency limits and
// a cap on range response size, enforced by gRPC interceptors in front of every service, so one
// misbehaving client cannot starve the others of a replica (or of the member behind it).

package gateway

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
// The limits are enforced by the interceptors NewGRPCServer installs; a grpc.Server built
// elsewhere and passed to Register is not protected, and each server NewGRPCServer builds
// keeps its own per-client state.
//
// # Client identity
//
// Limits apply per client identity, the first of:
//   - "cn:<name>": the Common Name of the client's TLS certificate, the leaf of the chain the
//     gRPC server's TLS configuration verified (tls.Config.ClientAuth VerifyClientCertIfGiven
//     or RequireAndVerifyClientCert). A certificate presented but not verified names no one:
//     any client could present one naming another client, or a new name per connection;
//   - "token:<hash>": the client's etcd auth token (etcd's "token" metadata, or
//     "authorization"), by a hash of it, so the replica keeps no credentials: one session of
//     an etcd user. Only a token etcd has accepted, and only while etcd's auth is on (as the
//     replica's probes last found it). A token becomes known when a unary KV call carrying it
//     (Range, Put, DeleteRange, Txn, Compact) succeeds: etcd answers those only after checking
//     the token, and the replica passes every one carrying a token through to etcd. Until
//     then the token's calls are their address's, so a made-up token buys nothing: etcd
//     refuses it (Unauthenticated, "etcdserver: invalid auth token") and the address paid for
//     the call. Streams (Watch, LeaseKeepAlive, RangeStream) use known tokens but make none
//     known: the replica serves watches itself, without etcd checking their tokens. Known
//     tokens are forgotten when etcd's auth is found off, since etcd then accepts any token;
//   - "addr:<ip>": the peer's IP address without the port, so opening more connections does
//     not buy more requests. (IPv6 addresses are not grouped by prefix: pods of one node may
//     share a /64.)
//
// A token is not grouped by the user name it may claim (a JWT's "username"): the replica
// cannot check its signature, and a forged token naming another user would spend that user's
// allowance. An etcd user with several sessions has an allowance per session, but a session
// is charged to its address until its first call succeeds, so new sessions cost their
// address's allowance. It also means that a client exhausting a shared address's allowance
// keeps the new sessions behind that address from becoming known (known ones keep their own
// allowances).
//
// # Deployment
//
// The limits are per replica: a client spreading its requests over n replicas gets n times
// the allowance, and n replicas together admit n times what one does.
//
// Behind a load balancer or proxy that rewrites source addresses (SNAT, an L7 proxy that
// terminates the client's connection), every client reaches the replica from the balancer's
// addresses: clients without a certificate or known token share one "addr:" identity, and
// one allowance, per balancer address. There, identify clients by TLS client certificates
// that the replica verifies (the balancer passing TLS through) or by etcd auth tokens.
//
// # Memory
//
// Per-identity state is kept for at most 100,000 identities, and at most 100,000 known
// tokens, the least recently seen dropped first, so a client spraying identities costs
// bounded memory. A dropped identity that returns starts afresh: a full burst, and none of
// its requests in flight counted; a dropped token is its address's again until a call
// carrying it succeeds.
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
	// once. Expensive is a Range or RangeStream over more than one key (range_end set),
	// whatever its limit, and a Txn with such a Range in either branch, however deeply
	// nested: to compute the response's count, the cache and the member both walk the whole
	// range, however few keys they return. 0: no limit. Default 0.
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
	p         Protection
	clients   *lruTable[*client] // nil when neither rate nor concurrency is limited
	newClient func() *client     // a new identity's state
	tokens    *knownTokens       // the tokens etcd accepted; nil when clients is
	rejected  metric.Int64Counter
	logger    *slog.Logger
	now       func() time.Time // the rate limiters' clock
	authOn    func() bool      // whether etcd's auth is on, so that tokens may identify clients
}

// newGuard returns a guard enforcing p, keeping state for at most size identities and size
// known tokens.
func newGuard(p Protection, size int, rejected metric.Int64Counter, logger *slog.Logger, now func() time.Time, authOn func() bool) *guard {
	g := &guard{p: p, rejected: rejected, logger: logger, now: now, authOn: authOn}
	if p.RequestsPerSecond > 0 || p.MaxConcurrentExpensive > 0 {
		burst := p.Burst
		if burst == 0 {
			burst = int(max(1, min(math.Ceil(p.RequestsPerSecond), math.MaxInt32)))
		}
		g.clients = newLRUTable[*client](size)
		g.newClient = func() *client {
			c := &client{}
			if p.RequestsPerSecond > 0 {
				c.limiter = rate.NewLimiter(rate.Limit(p.RequestsPerSecond), burst)
			}
			return c
		}
		g.tokens = &knownTokens{set: newLRUTable[struct{}](size)}
	}
	return g
}

// unary is the unary interceptor: rate, then concurrency, then the response's size. A call
// that succeeds makes its token known if etcd checked it (see Protection).
func (g *guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	var id, pending string
	if g.clients != nil {
		id, pending = g.identify(ctx)
		c := g.clients.get(id, g.newClient)
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
	if pending != "" && err == nil && tokenChecked(info.FullMethod) && g.authOn() {
		g.tokens.add(pending)
	}
	if r, ok := resp.(*pb.RangeResponse); ok && err == nil && g.p.MaxRangeResponseBytes > 0 {
		if n := int64(proto.Size(r)); n > g.p.MaxRangeResponseBytes {
			if id == "" {
				id, _ = g.identify(ctx)
			}
			g.reject(ctx, reasonBytes, "response_bytes", id, info.FullMethod)
			return nil, status.Errorf(codes.ResourceExhausted,
				"watchgate: range response of %d bytes exceeds the limit of %d bytes; page it with limit", n, g.p.MaxRangeResponseBytes)
		}
	}
	return resp, err
}

// stream is the stream interceptor: opening a stream counts against the rate, and a
// server-streaming call (RangeStream) whose request is expensive holds a concurrency slot
// until it ends. Streams make no token known.
func (g *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if g.clients == nil {
		return handler(srv, ss)
	}
	ctx := ss.Context()
	id, _ := g.identify(ctx)
	c := g.clients.get(id, g.newClient)
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

// expensiveRange: a range over more than one key, which etcd and the cache walk whole to
// count it, whatever its limit.
func expensiveRange(r *pb.RangeRequest) bool { return len(r.RangeEnd) > 0 }

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

// maxClients bounds the identities a replica keeps state for, and the tokens it knows.
const maxClients = 100_000

// client is one identity's state.
type client struct {
	limiter   *rate.Limiter // the rate limit's token bucket; nil without one
	expensive atomic.Int64  // expensive requests in flight
}

// knownTokens is the set of tokens, by digest, that etcd accepted while its auth was on. It
