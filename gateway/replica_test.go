package gateway_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/ingest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// parts is a deployment assembled piece by piece, so a test can kill and restart one piece.
type parts struct {
	member  *clientv3.Client
	natsURL string
	js      jetstream.JetStream
	log     *eventlog.Log
}

func newParts(t *testing.T, ctx context.Context) *parts {
	t.Helper()
	e := testenv.Etcd(t)
	ns := testenv.NATS(t)
	_, js := testenv.JetStream(t, ns.ClientURL())
	return &parts{member: testenv.Client(t, e.Endpoint), natsURL: ns.ClientURL(), js: js,
		log: testenv.EventLog(ctx, t, js)}
}

// runIngest runs an ingest worker on its own NATS connection; kill drops the connection with
// publishes in flight and stops the worker.
func (p *parts) runIngest(t *testing.T, ctx context.Context) (ing *ingest.Ingester, kill func()) {
	t.Helper()
	nc, js := testenv.JetStream(t, p.natsURL)
	ing, err := ingest.New(ingest.Options{Member: p.member, Log: testenv.EventLog(ctx, t, js)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = ing.Run(ctx) })
	var once sync.Once
	kill = func() { once.Do(func() { nc.Close(); cancel(); wg.Wait() }) }
	t.Cleanup(kill)
	return ing, kill
}

// runGateway serves a gateway replica on a free loopback port and returns a client of it.
func (p *parts) runGateway(t *testing.T, ctx context.Context, edit func(*gateway.Options)) (*gateway.Server, *clientv3.Client) {
	t.Helper()
	member, err := clientv3.New(clientv3.Config{Endpoints: p.member.Endpoints(), DialTimeout: 10 * time.Second,
		Logger: zap.NewNop(), MaxUnaryRetries: 1}) // as gateway.Options.Member asks
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { member.Close() })
	o := gateway.Options{Member: member, JetStream: p.js}
	if edit != nil {
		edit(&o)
	}
	srv, err := gateway.New(o)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := srv.NewGRPCServer()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = g.Serve(lis) })
	wg.Go(func() { _ = srv.Run(ctx) })
	t.Cleanup(func() { g.Stop(); cancel(); wg.Wait() })
	return srv, testenv.Client(t, "http://"+lis.Addr().String())
}
