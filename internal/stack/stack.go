// Package stack assembles a whole watchgate deployment in one process: embedded etcd (or an
// external one), embedded NATS JetStream, one ingest worker and one gateway replica, all on
// loopback. `watchgate dev`
// runs it; tests and benchmarks run the same code.
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/ingest"
	"github.com/watchgate/watchgate/internal/embedded"
)

// Options configures a Stack.
type Options struct {
	// DataDir holds etcd's data (DataDir/etcd) and JetStream's (DataDir/nats). Required.
	DataDir string
	// ClientAddr is where the gateway serves etcd's gRPC API. Default "127.0.0.1:2379".
	ClientAddr string
	// HTTPAddr serves /healthz, /readyz and /metrics. Default "127.0.0.1:9379"; "off" disables.
	HTTPAddr string
	// EtcdClientAddr and EtcdPeerAddr are the embedded etcd's listeners.
	// Defaults "127.0.0.1:12379" and "127.0.0.1:12380".
	EtcdClientAddr, EtcdPeerAddr string
	// EtcdEndpoints, if set, names an etcd cluster to use instead of embedding one; the
	// EtcdClientAddr, EtcdPeerAddr and UnsafeNoFsync options are then ignored and Stack.Etcd is nil.
	EtcdEndpoints []string
	// NATSPort is the embedded NATS server's port on 127.0.0.1. Default 14222; -1 picks a free one.
	NATSPort int
	// UnsafeNoFsync disables etcd's fsync (tests and benchmarks only). Default false.
	UnsafeNoFsync bool
	// Gateway and Ingest tune the components; their Member, JetStream, Log and Logger fields
	// are filled in by the stack.
	Gateway gateway.Options
	Ingest  ingest.Options
	// Log configures the event log stream. Default: eventlog.Config's defaults.
	Log eventlog.Config
	// Metrics, if set, is served at /metrics.
	Metrics http.Handler
	// Logger receives every component's logs. Default: discard.
	Logger *slog.Logger
	// EtcdLogger replaces etcd's own logger. Default: etcd's, at level "error".
	EtcdLogger *zap.Logger
}

// Stack is a running all-in-one deployment.
type Stack struct {
	Etcd    *embedded.Etcd // nil when Options.EtcdEndpoints named an external cluster
	NATS    *server.Server
	Member  *clientv3.Client
	Gateway *gateway.Server
	Ingest  *ingest.Ingester
	// ClientURL is the gateway's etcd endpoint; HTTPURL its health and metrics endpoint ("" if off).
	ClientURL, HTTPURL string

	nc     *nats.Conn
	grpc   *grpc.Server
	http   *http.Server
	cancel context.CancelFunc
	failed chan error // the gateway's Run error, if it stopped with one
	wg     sync.WaitGroup
	closed sync.Once
}

func (o *Options) setDefaults() {
	if o.ClientAddr == "" {
		o.ClientAddr = "127.0.0.1:2379"
	}
	if o.HTTPAddr == "" {
		o.HTTPAddr = "127.0.0.1:9379"
	}
	if o.EtcdClientAddr == "" {
		o.EtcdClientAddr = "127.0.0.1:12379"
	}
	if o.EtcdPeerAddr == "" {
		o.EtcdPeerAddr = "127.0.0.1:12380"
	}
	if o.NATSPort == 0 {
		o.NATSPort = 14222
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Start brings the deployment up and returns once the gateway accepts connections. The
// gateway's readiness (caught up with the log) is reported by Stack.Gateway.Ready.
func Start(ctx context.Context, o Options) (_ *Stack, err error) {
	if o.DataDir == "" {
		return nil, errors.New("stack: DataDir is required")
	}
	o.setDefaults()
	st := &Stack{}
	defer func() {
		if err != nil {
			st.Close() // whatever was started before the failure
		}
	}()
	lg := o.Logger

	endpoints := o.EtcdEndpoints
	if len(endpoints) == 0 {
		if st.Etcd, err = embedded.StartEtcd(embedded.EtcdOptions{
			Dir: filepath.Join(o.DataDir, "etcd"), ClientAddr: o.EtcdClientAddr, PeerAddr: o.EtcdPeerAddr,
			UnsafeNoFsync: o.UnsafeNoFsync, ZapLogger: o.EtcdLogger,
		}); err != nil {
			return nil, err
		}
		endpoints = []string{st.Etcd.Endpoint}
	}
	if st.NATS, err = embedded.StartNATS(embedded.NATSOptions{
		StoreDir: filepath.Join(o.DataDir, "nats"), Port: o.NATSPort, Logger: lg.With("component", "nats"),
	}); err != nil {
		return nil, err
	}
	if st.Member, err = clientv3.New(clientv3.Config{
		Endpoints: endpoints, DialTimeout: 10 * time.Second, Logger: zap.NewNop(),
		MaxUnaryRetries: 1, // see gateway.Options.Member
	}); err != nil {
		return nil, fmt.Errorf("stack: etcd client: %w", err)
	}
	if st.nc, err = nats.Connect(st.NATS.ClientURL(), nats.MaxReconnects(-1)); err != nil {
		return nil, fmt.Errorf("stack: nats: %w", err)
	}
	js, err := jetstream.New(st.nc)
	if err != nil {
		return nil, fmt.Errorf("stack: jetstream: %w", err)
	}
	log, err := eventlog.Ensure(ctx, js, o.Log)
	if err != nil {
		return nil, err
	}

	io := o.Ingest
	io.Member, io.Log, io.Logger = st.Member, log, lg.With("component", "ingest")
	if st.Ingest, err = ingest.New(io); err != nil {
		return nil, err
	}
	gwo := o.Gateway
	gwo.Member, gwo.JetStream, gwo.Log, gwo.Logger = st.Member, js, o.Log, lg.With("component", "gateway")
	lis, err := net.Listen("tcp", o.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("stack: gateway listener: %w", err)
	}
	st.ClientURL = "http://" + lis.Addr().String()
	if gwo.AdvertiseClientURL == "" {
		gwo.AdvertiseClientURL = st.ClientURL
	}
	if st.Gateway, err = gateway.New(gwo); err != nil {
		lis.Close()
		return nil, err
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	st.cancel = cancel
	st.wg.Go(func() { _ = st.Ingest.Run(runCtx) })
	st.failed = make(chan error, 1)
	st.wg.Go(func() {
		if err := st.Gateway.Run(runCtx); err != nil {
			st.failed <- err
		}
	})
	st.grpc = st.Gateway.NewGRPCServer()
	st.wg.Go(func() { _ = st.grpc.Serve(lis) })

	if o.HTTPAddr != "off" {
		hl, err := net.Listen("tcp", o.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("stack: http listener: %w", err)
		}
		st.HTTPURL = "http://" + hl.Addr().String()
		st.http = &http.Server{Handler: st.Gateway.HTTPHandler(o.Metrics), ReadHeaderTimeout: 10 * time.Second}
		st.wg.Go(func() { _ = st.http.Serve(hl) })
	}
	return st, nil
}

// WaitReady blocks until the gateway has caught up with the event log and loaded its cache,
// or has failed, or ctx ends.
func (st *Stack) WaitReady(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !st.Gateway.Ready() {
		select {
		case err := <-st.failed:
			st.failed <- err
			return err
		case <-ctx.Done():
			return fmt.Errorf("stack: gateway not ready: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Close stops everything, in the reverse order of Start.
func (st *Stack) Close() {
	st.closed.Do(func() {
		if st.http != nil {
			st.http.Close()
		}
		if st.grpc != nil {
			st.Gateway.Drain() // watch streams end with a code clients retry
			st.grpc.Stop()
		}
		if st.cancel != nil {
			st.cancel()
		}
		st.wg.Wait()
		if st.nc != nil {
			st.nc.Close()
		}
		if st.Member != nil {
			st.Member.Close()
		}
		if st.NATS != nil {
			st.NATS.Shutdown()
			st.NATS.WaitForShutdown()
		}
		if st.Etcd != nil {
			st.Etcd.Close()
		}
	})
}
