package embedded

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATSClusterOptions configures an embedded NATS JetStream cluster.
type NATSClusterOptions struct {
	// Dir holds each node's JetStream storage, in Dir/<node name>. Required.
	Dir string
	// Nodes is the number of nodes. Default 3, the smallest cluster that survives losing one.
	Nodes int
	// Name is the cluster's name; the nodes are <Name>-0, <Name>-1, … Default "watchgate".
	Name string
	// Host to listen on, for clients and routes. Default "127.0.0.1".
	Host string
	// ClientPorts and RoutePorts are each node's client and cluster route ports. Default (nil):
	// free ports chosen at start and kept for the cluster's life, so a restarted node comes back
	// where its peers and clients look for it.
	ClientPorts, RoutePorts []int
	// MaxPayload is the largest message the nodes accept. Default DefaultMaxPayload.
	MaxPayload int32
	// Logger receives the nodes' notices and errors, with the node's name. Default: none.
	Logger *slog.Logger
	// StartTimeout bounds how long a node may take to accept connections, and the cluster to
	// elect its JetStream meta leader. Default 30 s.
	StartTimeout time.Duration
}

// NATSCluster is a running embedded NATS cluster with JetStream. Each node can be shut down and
// restarted on its own ports and storage, so the JetStream state it held survives. It is safe
// for concurrent use, except that one node must not be shut down and restarted at once.
type NATSCluster struct {
	o    NATSClusterOptions
	opts []*server.Options // each node's options, reused by Restart

	mu    sync.Mutex
	nodes []*server.Server // guarded by mu; nil while a node is down
}

// StartNATSCluster starts every node and waits until the cluster has a JetStream meta leader
// that counts every node as a peer, so a stream replicated on all of them can be created.
func StartNATSCluster(o NATSClusterOptions) (*NATSCluster, error) {
	if o.Dir == "" {
		return nil, errors.New("embedded: JetStream store dir is required")
	}
	if o.Nodes <= 0 {
		o.Nodes = 3
	}
	if o.Name == "" {
		o.Name = "watchgate"
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 30 * time.Second
	}
	var err error
	if o.ClientPorts, err = portsFor(o.Host, o.ClientPorts, o.Nodes); err != nil {
		return nil, err
	}
	if o.RoutePorts, err = portsFor(o.Host, o.RoutePorts, o.Nodes); err != nil {
		return nil, err
	}
	c := &NATSCluster{o: o, nodes: make([]*server.Server, o.Nodes)}
	var routes []*url.URL
	for i := range o.Nodes {
		routes = append(routes, &url.URL{Scheme: "nats", Host: net.JoinHostPort(o.Host, strconv.Itoa(o.RoutePorts[i]))})
	}
	for i := range o.Nodes {
		name := fmt.Sprintf("%s-%d", o.Name, i)
		c.opts = append(c.opts, &server.Options{
			ServerName: name,
			Host:       o.Host,
			Port:       o.ClientPorts[i],
			JetStream:  true,
			StoreDir:   filepath.Join(o.Dir, name),
			MaxPayload: o.MaxPayload,
			Cluster: server.ClusterOpts{
				Name: o.Name,
				Host: o.Host,
				Port: o.RoutePorts[i],
			},
			Routes:                 routes,
			NoSigs:                 true,
			DisableJetStreamBanner: true,
		})
	}
	// The nodes start together: each waits for its routes, and JetStream needs a quorum.
	errs := make([]error, o.Nodes)
	var wg sync.WaitGroup
	for i := range o.Nodes {
		wg.Go(func() { errs[i] = c.start(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.WaitJetStream(o.StartTimeout); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// portsFor returns ports if given (one per node), or n free ports on host.
func portsFor(host string, ports []int, n int) ([]int, error) {
	if ports != nil {
		if len(ports) != n {
			return nil, fmt.Errorf("embedded: %d ports for %d nodes", len(ports), n)
		}
		return ports, nil
	}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("embedded: a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// start starts node i from its options and waits until it accepts connections.
func (c *NATSCluster) start(i int) error {
	o := *c.opts[i] // the server keeps and changes its options
	ns, err := server.NewServer(&o)
	if err != nil {
		return fmt.Errorf("embedded: nats node %s: %w", c.opts[i].ServerName, err)
	}
	if c.o.Logger != nil {
		ns.SetLoggerV2(slogNATSLogger{c.o.Logger.With("node", c.opts[i].ServerName)}, false, false, false)
	}
	go ns.Start()
	if !ns.ReadyForConnections(c.o.StartTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return fmt.Errorf("embedded: nats node %s did not become ready in time", c.opts[i].ServerName)
	}
	c.mu.Lock()
	c.nodes[i] = ns
	c.mu.Unlock()
	return nil
}

// WaitJetStream waits up to timeout until a running node leads the JetStream meta group and
// counts every running node as a peer: the cluster can then create streams with as many
// replicas as nodes are running.
func (c *NATSCluster) WaitJetStream(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		running, peers := 0, 0
		for _, ns := range c.nodes {
			if ns == nil {
				continue
			}
			running++
			if ns.JetStreamIsLeader() {
				peers = len(ns.JetStreamClusterPeers())
			}
		}
		c.mu.Unlock()
		if running > 0 && peers >= running {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("embedded: the JetStream cluster has no meta leader with all %d running nodes after %v", running, timeout)
		}
		time.Sleep(10 * time.Millisecond) // polling an election
	}
}

// Shutdown stops node i at once: its client and route connections drop and its JetStream state
// stays in its store directory. As any server shutdown, it first hands over the raft groups it
// leads, as a node that is stopped (rather than one that crashes) does. It does nothing if the
// node is down.
func (c *NATSCluster) Shutdown(i int) {
	c.mu.Lock()
	ns := c.nodes[i]
	c.nodes[i] = nil
	c.mu.Unlock()
	if ns != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}

// Restart starts node i again on its ports and store directory, and waits until it accepts
// connections. It does nothing if the node is running.
func (c *NATSCluster) Restart(i int) error {
	c.mu.Lock()
	up := c.nodes[i] != nil
	c.mu.Unlock()
	if up {
		return nil
	}
	return c.start(i)
}

// Close shuts every node down.
func (c *NATSCluster) Close() {
	var wg sync.WaitGroup
	for i := range c.nodes {
		wg.Go(func() { c.Shutdown(i) })
	}
	wg.Wait()
}

// Len is the number of nodes, running or not.
func (c *NATSCluster) Len() int { return len(c.opts) }

// Node returns node i's server, or nil while it is down.
func (c *NATSCluster) Node(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Name is node i's server name, as JetStream reports it (for example as a stream's leader).
func (c *NATSCluster) Name(i int) string { return c.opts[i].ServerName }

// Index returns the index of the node named name, or -1.
func (c *NATSCluster) Index(name string) int {
	for i, o := range c.opts {
		if o.ServerName == name {
			return i
		}
	}
	return -1
}

// URLs are the nodes' client URLs, running or not.
func (c *NATSCluster) URLs() []string {
	var out []string
	for _, o := range c.opts {
		out = append(out, "nats://"+net.JoinHostPort(o.Host, strconv.Itoa(o.Port)))
	}
	return out
}

// ClientURL is every node's client URL, comma-separated, as nats.Connect takes a server list.
func (c *NATSCluster) ClientURL() string { return strings.Join(c.URLs(), ",") }
