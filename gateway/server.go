package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"

	"github.com/watchgate/watchgate/cache"
	"github.com/watchgate/watchgate/eventlog"
)

// Options configures a gateway replica.
type Options struct {
	// Member is a client of the etcd member cluster that writes, reads and leases pass through
	// to. Required. It must not carry credentials of its own (Username/Password): callers'
	// auth tokens are forwarded with each call, and a connection-level token would be sent
	// first and lend every caller the gateway's identity. Build it with MaxUnaryRetries: 1:
	// clientv3 otherwise retries a call up to 100 times (an invalid token among the errors it
	// retries), so one client's bad call would cost etcd a hundred; the caller retries as it
	// sees fit.
	Member *clientv3.Client
	// JetStream reaches the event log. Required.
	JetStream jetstream.JetStream
	// Log names the event log's stream. Default: eventlog.Config's defaults.
	Log eventlog.Config
	// AdvertiseClientURL is the URL MemberList reports for this replica.
	// Default "http://127.0.0.1:2379".
	AdvertiseClientURL string
	// HistoryRevisions bounds the in-memory history ring by count. Default 10,000.
	HistoryRevisions int
	// HistoryBytes bounds the history ring by encoded size. Default 64 MiB.
	HistoryBytes int64
	// WatchSendBuffer is how many responses a watch stream queues before its watchers fall
	// back to catching up from history. Default 256.
	WatchSendBuffer int
	// WatchSendBytes bounds the event bytes a watch stream queues, whatever the number of
	// responses: past it, as past WatchSendBuffer, its watchers fall back to catching up from
	// history. With WatchSendBuffer it bounds a stream's memory when its client reads slowly or
	// not at all. Default 1 MiB.
	WatchSendBytes int64
	// MaxRequestBytes is the largest request accepted, as etcd's --max-request-bytes; the gRPC
	// limit is this plus etcd's 512 KiB allowance. Default 1.5 MiB, etcd's default.
	MaxRequestBytes int
	// WatchProgressNotifyInterval is how often a watcher created with progress_notify that
	// received no events gets an empty response carrying the current revision, as etcd's
	// --watch-progress-notify-interval (plus etcd's random jitter of up to a tenth). Default
	// 10 minutes, etcd's default; at least 100 ms, etcd's minimum.
	WatchProgressNotifyInterval time.Duration
	// MaxWatchStreams, MaxWatchers and MaxWatchersPerStream limit the watch streams open on
	// the replica, its watchers, and the watchers of one stream. Past a limit a new stream
	// fails with ResourceExhausted, and a new watcher is refused as etcd refuses a bad create
	// request (created and canceled, watch id -1, the limit in the reason). 0: no limit, as
	// etcd. Default 0.
	MaxWatchStreams, MaxWatchers, MaxWatchersPerStream int
	// LeaderCheckInterval is how often the replica checks its event log and member
	// connections. A watch stream that requires a leader is refused while either is down, and
	// ended with etcd's no-leader error after three failed checks in a row, as etcd ends them
	// after three election timeouts without a leader. Default 1 s (etcd's default election
	// timeout).
	LeaderCheckInterval time.Duration
	// CachePrefixes are the key prefixes the keyspace cache holds: a Range within one of them
	// is answered from the cache, any other passes through to the member. Default: every key.
	CachePrefixes []string
	// CacheMaxBytes bounds the keyspace cache's memory (keys, values and their bookkeeping). A
	// replica whose prefixes do not fit fails at startup; a keyspace that outgrows the bound
	// later is dropped and reads pass through until it fits again. Default 2 GiB; negative
	// disables the cache, and every read passes through.
	CacheMaxBytes int64
	// CacheWait bounds how long a linearizable read waits for the cache to reach etcd's
	// current revision before it is passed through to the member instead. Default 3 s.
	CacheWait time.Duration
	// ResponseCacheBytes bounds the encoded range responses kept for reuse by identical
	// requests. Default 64 MiB; negative disables the response cache.
	ResponseCacheBytes int64
	// Protection limits what one client may ask of the replica. Default: no limits.
	Protection Protection
	// RetryDelay is the pause before resuming after an event log error. Default 500 ms.
	RetryDelay time.Duration
	// Logger receives warnings and errors. Default: discard.
	Logger *slog.Logger
	// Meter records metrics. Default: no-op.
	Meter metric.Meter
}

func (o *Options) setDefaults() error {
	if o.Member == nil || o.JetStream == nil {
		return errors.New("gateway: Member and JetStream are required")
	}
	if o.AdvertiseClientURL == "" {
		o.AdvertiseClientURL = "http://127.0.0.1:2379"
	}
	if o.HistoryRevisions <= 0 {
		o.HistoryRevisions = 10000
	}
	if o.HistoryBytes <= 0 {
		o.HistoryBytes = 64 << 20
	}
	if o.WatchSendBuffer <= 0 {
		o.WatchSendBuffer = 256
	}
	if o.WatchSendBytes <= 0 {
		o.WatchSendBytes = 1 << 20
	}
	if o.MaxRequestBytes <= 0 {
		o.MaxRequestBytes = 3 << 19 // 1.5 MiB
	}
	switch {
	case o.WatchProgressNotifyInterval <= 0:
		o.WatchProgressNotifyInterval = 10 * time.Minute
	case o.WatchProgressNotifyInterval < minWatchProgressInterval:
		o.WatchProgressNotifyInterval = minWatchProgressInterval
	}
	if o.LeaderCheckInterval <= 0 {
		o.LeaderCheckInterval = time.Second
	}
	if o.CacheMaxBytes == 0 {
		o.CacheMaxBytes = 2 << 30
	}
	if o.CacheWait <= 0 {
		o.CacheWait = 3 * time.Second
	}
	if o.ResponseCacheBytes == 0 {
		o.ResponseCacheBytes = 64 << 20
	}
	if err := o.Protection.validate(); err != nil {
		return err
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 500 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Meter == nil {
		o.Meter = noop.NewMeterProvider().Meter("")
	}
	return nil
}

// grpcOverheadBytes is the allowance etcd adds to --max-request-bytes for gRPC framing.
const grpcOverheadBytes = 512 * 1024

// Server is one gateway replica. Create it with New, serve it with NewGRPCServer (or Register
// on your own grpc.Server) and run its log consumer with Run.
type Server struct {
	o   Options
	m   *metrics
	hub *hub

	// hdr is the response header template (cluster id, member id, raft term) from the member,
	// refreshed by every revision probe.
	hdr atomic.Pointer[pb.ResponseHeader]

	leader leaderMonitor // require-leader streams and the replica's health

	streams, watchers atomic.Int64 // open watch streams and watchers, for the limits

	probes compactionProbes // questions to the member about its compaction

	probe     revisionProbe      // linearizable reads of etcd's revision, shared
	flight    singleflight.Group // identical range requests computed once
	authCheck singleflight.Group // serializable reads asking whether auth is on
	reads     readCounters
	drain     streamSet // every stream, ended (and new ones refused) when the replica drains
	// authFree is when (Unix ns) the member last answered a read without credentials: auth
	// was off. Reads are served from the cache only while this is recent.
	authFree atomic.Int64
	// authOn is whether the member's auth was on when a probe last told.
	authOn atomic.Bool
}

// New checks o and builds a replica. It does no I/O.
func New(o Options) (*Server, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Meter)
	if err != nil {
		return nil, fmt.Errorf("gateway: metrics: %w", err)
	}
	s := &Server{o: o, m: m}
	s.hdr.Store(&pb.ResponseHeader{})
	s.hub = newHub(o, m, s.header)
	if err := s.observeCache(o.Meter); err != nil {
		return nil, fmt.Errorf("gateway: metrics: %w", err)
	}
	return s, nil
}

// Register adds the replica's etcd services to g: KV, Watch, Lease, Maintenance and Cluster.
func (s *Server) Register(g *grpc.Server) {
	conn := s.o.Member.ActiveConnection()
	kv := newKVServer(conn)
	kv.compacted = s.probes.forget
	kv.cached = s.rangeCached
	kv.passed = func() {
		s.reads.passed.Add(1)
		s.m.reads.Add(context.Background(), 1, answerPassthrough)
	}
	pb.RegisterKVServer(g, kv)
	pb.RegisterWatchServer(g, &watchServer{s: s})
	pb.RegisterLeaseServer(g, newLeaseServer(conn))
	pb.RegisterMaintenanceServer(g, newMaintenanceServer(conn))
	pb.RegisterClusterServer(g, newClusterServer(conn, s.o.AdvertiseClientURL))
}

// NewGRPCServer returns a grpc.Server with etcd's message size limits and the replica's
// services registered.
func (s *Server) NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	opts = append(append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.o.MaxRequestBytes + grpcOverheadBytes),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.MaxConcurrentStreams(math.MaxUint32),
		grpc.WriteBufferSize(256 << 10),
		grpc.SharedWriteBuffer(true),
		grpc.ChainStreamInterceptor(s.drainStreams),
	}, s.protection()...), opts...)
	g := grpc.NewServer(opts...)
	s.Register(g)
	return g
}

// Run binds the event log (waiting for ingest to create it) and consumes it until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	var log *eventlog.Log
	for {
		var err error
		if log, err = eventlog.Bind(ctx, s.o.JetStream, s.o.Log); err == nil {
			break
		}
		s.o.Logger.Warn("waiting for the event log", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.o.RetryDelay):
		}
	}
	s.hub.log = log
	if _, err := s.currentRevision(ctx); err != nil {
		s.o.Logger.Warn("member not reachable yet", "err", err)
	}
	if s.o.CacheMaxBytes > 0 {
		err := s.buildKeyspace(ctx)
		if errors.Is(err, cache.ErrTooBig) {
			return fmt.Errorf("gateway: the cached prefixes do not fit in the keyspace cache; raise CacheMaxBytes, narrow CachePrefixes or disable the cache: %w", err)
		}
		if err != nil {
			s.o.Logger.Warn("keyspace cache not loaded yet; reads pass through to the member", "err", err)
			s.hub.rebuild <- struct{}{}
		}
		go s.keepKeyspace(ctx)
	}
	go s.monitorLeader(ctx, s.o.LeaderCheckInterval)
	return s.hub.run(ctx)
}

// Ready reports whether the replica has caught up with the event log as it stood at startup
// and, unless it is disabled, loaded its keyspace cache once, and is not draining.
func (s *Server) Ready() bool {
	_, ready := s.hub.status()
	return ready && (s.o.CacheMaxBytes <= 0 || s.hub.loaded.Load()) && !s.draining()
}

// Applied is the last revision the replica has applied from the event log.
func (s *Server) Applied() int64 {
	applied, _ := s.hub.status()
	return applied
}

// header returns a response header at revision rev.
func (s *Server) header(rev int64) *pb.ResponseHeader {
	t := s.hdr.Load()
	return &pb.ResponseHeader{ClusterId: t.ClusterId, MemberId: t.MemberId, RaftTerm: t.RaftTerm, Revision: rev}
}
