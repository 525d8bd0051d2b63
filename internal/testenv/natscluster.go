package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/watchgate/watchgate/internal/embedded"
)

// NATSCluster starts an n-node NATS JetStream cluster on loopback, its storage in a temporary
// directory, and waits until it can create streams replicated on every node. Every node is shut
// down at cleanup.
func NATSCluster(t testing.TB, n int) *embedded.NATSCluster {
	t.Helper()
	ports := Ports(t, 2*n) // restarted nodes come back on them
	c, err := embedded.StartNATSCluster(embedded.NATSClusterOptions{Dir: t.TempDir(), Nodes: n,
		ClientPorts: ports[:n], RoutePorts: ports[n:]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// StreamLeader returns the index in c of the node that leads stream, asking through js until
// the stream has a leader.
func StreamLeader(ctx context.Context, t testing.TB, c *embedded.NATSCluster, js jetstream.JetStream, stream string) int {
	t.Helper()
	for {
		// Each try is bounded: a request whose reply is lost while the connection moves to
		// another node would otherwise wait for the whole test's context.
		try, cancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := js.Stream(try, stream)
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = s.Info(try)
		}
		cancel()
		if err == nil {
			if info.Cluster != nil && info.Cluster.Leader != "" {
				if i := c.Index(info.Cluster.Leader); i >= 0 {
					return i
				}
				t.Fatalf("stream %s: leader %q is not a node of the cluster", stream, info.Cluster.Leader)
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("stream %s has no leader: %v", stream, err)
		case <-time.After(20 * time.Millisecond): // polling an election
		}
	}
}
