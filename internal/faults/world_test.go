package faults

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/ingest"
)

// world is a whole deployment whose parts can be killed and restarted: the etcd cluster, the
// JetStream cluster, elected ingest workers and gateway replicas on fixed loopback addresses.
type world struct {
	t        testing.TB
	ctx      context.Context
	etcd     []string // etcd client URLs
	natsURLs string   // comma-separated
	logCfg   eventlog.Config
	ttl      time.Duration // ingest election TTL
	logger   *slog.Logger  // warnings of the parts, on stderr with -v

	mu       sync.Mutex
	workers  []*worker  // guarded by mu
	replicas []*replica // guarded by mu; a killed replica keeps its slot and address
}

// connectNATS opens a connection to every node of the JetStream cluster that reconnects
// forever.
func (w *world) connectNATS() (*nats.Conn, jetstream.JetStream) {
	w.t.Helper()
	nc, err := nats.Connect(w.natsURLs, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		w.t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		w.t.Fatal(err)
	}
	return nc, js
}

// etcdClient returns a client of every etcd member. gateway asks for one unary attempt per call.
func (w *world) etcdClient(unaryRetries uint) *clientv3.Client {
	w.t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: w.etcd, DialTimeout: 10 * time.Second,
		Logger: zap.NewNop(), MaxUnaryRetries: unaryRetries})
	if err != nil {
		w.t.Fatal(err)
	}
	return c
}

// worker is one ingest process.
type worker struct {
	name   string
	ing    *ingest.Ingester
	etcd   *clientv3.Client
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{}
}

// startWorker starts an elected ingest worker.
func (w *world) startWorker(name string) *worker {
	w.t.Helper()
	c := w.etcdClient(0)
	nc, js := w.connectNATS()
	log, err := eventlog.Ensure(w.ctx, js, w.logCfg)
	if err != nil {
		w.t.Fatal(err)
	}
	ing, err := ingest.New(ingest.Options{Member: c, Log: log, RetryDelay: 50 * time.Millisecond,
		AckTimeout: 2 * time.Second, Logger: w.logger.With("ingest", name),
		Election: &ingest.Election{Client: c, TTL: w.ttl, Name: name, SyncInterval: 100 * time.Millisecond}})
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(w.ctx)
	wk := &worker{name: name, ing: ing, etcd: c, nc: nc, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(wk.done); _ = ing.Run(ctx) }()
	w.t.Cleanup(wk.kill)
	w.mu.Lock()
	w.workers = append(w.workers, wk)
	w.mu.Unlock()
	return wk
}

// kill cuts a worker off as a crash would: its connections go first, so its lease is left to
// expire and nothing more reaches the log; then its goroutines stop, as the process would.
func (wk *worker) kill() {
	wk.nc.Close()
	// The connection goes first: closing the client alone ends the session's keep-alive
	// before the connection, and the worker's own revoke could still get through.
	wk.etcd.ActiveConnection().Close()
	wk.etcd.Close()
	wk.cancel()
	<-wk.done
}

// active returns the active worker, or nil.
func (w *world) active() *worker {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, wk := range w.workers {
		if wk.ing.Active() {
			return wk
		}
	}
	return nil
}

// replica is one gateway process on a fixed address.
type replica struct {
	addr   string
	srv    *gateway.Server
	grpc   *grpc.Server
	member *clientv3.Client
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{}
	dead   atomic.Bool // killed
}

// startReplica starts a gateway replica on addr.
func (w *world) startReplica(addr string) *replica {
	w.t.Helper()
	member := w.etcdClient(1)
	nc, js := w.connectNATS()
	srv, err := gateway.New(gateway.Options{Member: member, JetStream: js, Log: w.logCfg})
	if err != nil {
		w.t.Fatal(err)
	}
	var lis net.Listener
	for {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		// The killed replica's port may linger for a moment.
		if !strings.Contains(err.Error(), "address already in use") || w.ctx.Err() != nil {
			w.t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithCancel(w.ctx)
	r := &replica{addr: lis.Addr().String(), srv: srv, grpc: srv.NewGRPCServer(), member: member, nc: nc,
		cancel: cancel, done: make(chan struct{})}
	go func() { _ = r.grpc.Serve(lis) }()
	go func() { defer close(r.done); _ = srv.Run(ctx) }()
	w.t.Cleanup(r.kill)
	return r
}

// kill stops a replica abruptly: connections drop without a drain.
func (r *replica) kill() {
	r.dead.Store(true)
	r.grpc.Stop()
	r.cancel()
	<-r.done
	r.nc.Close()
	r.member.Close()
}

// endpoints are the gateway replicas' client URLs.
func (w *world) endpoints() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, r := range w.replicas {
		out = append(out, "http://"+r.addr)
	}
	return out
}

// waitReady waits until every replica is ready.
func (w *world) waitReady() {
	w.t.Helper()
	for {
		ready := true
		w.mu.Lock()
		for _, r := range w.replicas {
			ready = ready && r.srv.Ready()
		}
		w.mu.Unlock()
		if ready {
			return
		}
		select {
		case <-w.ctx.Done():
			w.t.Fatal("replicas not ready")
		case <-time.After(10 * time.Millisecond): // polling, not timing logic
		}
	}
}

// gatewayClient returns a client of every replica, as an application would use the fleet.
func (w *world) gatewayClient() *clientv3.Client {
	w.t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: w.endpoints(), DialTimeout: 10 * time.Second,
		Logger: zap.NewNop()})
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	return c
}

func (w *world) logf(format string, args ...any) {
	w.t.Helper()
	w.t.Logf("%s "+format, append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}
