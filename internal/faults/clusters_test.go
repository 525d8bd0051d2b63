package faults

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/watchgate/watchgate/eventlog"
)

// freePorts returns n free loopback ports, so that a restarted server can come back on its own.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var out []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

// etcdCluster is a 3-member embedded etcd cluster whose members can be killed and restarted.
type etcdCluster struct {
	cfgs []*embed.Config

	mu      sync.Mutex
	members []*embed.Etcd // guarded by mu; nil while killed
}

func startEtcdCluster(t testing.TB, n int) *etcdCluster {
	t.Helper()
	ports := freePorts(t, 2*n)
	var initial []string
	c := &etcdCluster{members: make([]*embed.Etcd, n)}
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(t.TempDir(), cfg.Name)
		cfg.UnsafeNoFsync = true
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		curl := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(ports[2*i])}
		purl := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(ports[2*i+1])}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{purl}, []url.URL{purl}
		initial = append(initial, cfg.Name+"="+purl.String())
		c.cfgs = append(c.cfgs, cfg)
	}
	for _, cfg := range c.cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = c.start(i) })
	}
	wg.Wait()
	t.Cleanup(func() {
		for i := range n {
			c.kill(i)
		}
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c *etcdCluster) start(i int) error {
	e, err := embed.StartEtcd(c.cfgs[i])
	if err != nil {
		return fmt.Errorf("etcd member %d: %w", i, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcd member %d: %w", i, err)
	case <-time.After(time.Minute):
		e.Close()
		return fmt.Errorf("etcd member %d did not become ready", i)
	}
	c.mu.Lock()
	c.members[i] = e
	c.mu.Unlock()
	return nil
}

// Endpoints are the members' client URLs.
func (c *etcdCluster) Endpoints() []string {
	var out []string
	for _, cfg := range c.cfgs {
		out = append(out, cfg.AdvertiseClientUrls[0].String())
	}
	return out
}

// Leader returns the index of the member that leads.
func (c *etcdCluster) Leader(t testing.TB) int {
	t.Helper()
	for range 500 {
		c.mu.Lock()
		for i, m := range c.members {
			if m != nil && m.Server.Leader() == m.Server.MemberID() {
				c.mu.Unlock()
				return i
			}
		}
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond) // polling an election, not timing logic
	}
	t.Fatal("no etcd leader")
	return -1
}

// Kill stops member i at once, without handing over its leadership.
func (c *etcdCluster) Kill(t testing.TB, i int) { c.kill(i) }

func (c *etcdCluster) kill(i int) {
	c.mu.Lock()
	m := c.members[i]
	c.members[i] = nil
	c.mu.Unlock()
	if m != nil {
		m.Server.HardStop()
		m.Close()
	}
}

// Restart starts member i again on its data dir and addresses.
func (c *etcdCluster) Restart(t testing.TB, i int) {
	t.Helper()
	if err := c.start(i); err != nil {
		t.Fatal(err)
	}
}

// natsCluster is a 3-node NATS JetStream cluster whose nodes can be killed and restarted.
type natsCluster struct {
	opts []*server.Options

	mu    sync.Mutex
	nodes []*server.Server // guarded by mu; nil while killed
}

func startNATSCluster(t testing.TB, n int) *natsCluster {
	t.Helper()
	ports := freePorts(t, 2*n)
	c := &natsCluster{nodes: make([]*server.Server, n)}
	var routes []*url.URL
	for i := range n {
		routes = append(routes, &url.URL{Scheme: "nats", Host: "127.0.0.1:" + strconv.Itoa(ports[2*i+1])})
	}
	for i := range n {
		c.opts = append(c.opts, &server.Options{
			ServerName: fmt.Sprintf("n%d", i),
			Host:       "127.0.0.1",
			Port:       ports[2*i],
			JetStream:  true,
			StoreDir:   filepath.Join(t.TempDir(), fmt.Sprintf("n%d", i)),
			MaxPayload: 8 << 20,
			NoSigs:     true,
			Cluster: server.ClusterOpts{
				Name: "watchgate", Host: "127.0.0.1", Port: ports[2*i+1],
			},
			Routes:                 routes,
			DisableJetStreamBanner: true,
		})
	}
	for i := range n {
		c.start(t, i)
	}
	t.Cleanup(func() {
		for i := range n {
			c.Kill(t, i)
		}
	})
	// Ready once the JetStream meta group has a leader.
	for range 1000 {
		c.mu.Lock()
		for _, s := range c.nodes {
			if s.JetStreamIsLeader() {
				c.mu.Unlock()
				return c
			}
		}
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond) // polling an election, not timing logic
	}
	t.Fatal("the JetStream cluster elected no meta leader")
	return nil
}

func (c *natsCluster) start(t testing.TB, i int) {
	t.Helper()
	o := *c.opts[i]
	s, err := server.NewServer(&o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		t.Fatalf("NATS node %d not ready", i)
	}
	c.mu.Lock()
	c.nodes[i] = s
	c.mu.Unlock()
}

// URLs are the nodes' client URLs.
func (c *natsCluster) URLs() []string {
	var out []string
	for _, o := range c.opts {
		out = append(out, fmt.Sprintf("nats://127.0.0.1:%d", o.Port))
	}
	return out
}

// StreamLeader returns the index of the node that leads the log's stream.
func (c *natsCluster) StreamLeader(ctx context.Context, t testing.TB, cfg eventlog.Config) int {
	t.Helper()
	nc, err := nats.Connect(strings.Join(c.URLs(), ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := cfg.Stream
	if name == "" {
		name = "WATCHGATE"
	}
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		t.Fatalf("stream info: %v", err)
	}
	for i, o := range c.opts {
		if o.ServerName == info.Cluster.Leader {
			return i
		}
	}
	t.Fatalf("stream leader %q is not a node of the cluster", info.Cluster.Leader)
	return -1
}

// Kill shuts node i down.
func (c *natsCluster) Kill(t testing.TB, i int) {
	c.mu.Lock()
	s := c.nodes[i]
	c.nodes[i] = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// Restart starts node i again on its store dir and ports.
func (c *natsCluster) Restart(t testing.TB, i int) {
	t.Helper()
	c.start(t, i)
}
