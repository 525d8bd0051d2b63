package gateway

import (
	"context"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
)

// A replica has no "leader" of its own; what a require-leader watch needs of it is what etcd's
// leader gives: a live source of revisions. The replica counts as leaderless while its
// connection to the event log (NATS) is down or its member connection has failed. As etcd does,
// a require-leader stream is refused at once while leaderless, and the open ones are ended with
// etcd's no-leader error once the replica has been leaderless for noLeaderChecks consecutive
// checks (etcd: three election timeouts), since reconnecting costs more than waiting a little.

// noLeaderChecks is how many failed checks in a row end the require-leader streams.
const noLeaderChecks = 3

// leaderMonitor tracks the replica's health and the require-leader streams.
type leaderMonitor struct {
	leaderless atomic.Bool
	streams    streamSet // the require-leader streams
}

// requiresLeader reports whether the stream's client asked for a leader (clientv3's
// WithRequireLeader sets this metadata).
func requiresLeader(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return false
	}
	ks := md[rpctypes.MetadataRequireLeaderKey]
	return len(ks) > 0 && ks[0] == rpctypes.MetadataHasLeader
}

// healthy reports whether the replica has a live event log and member connection.
func (s *Server) healthy() bool {
	if !s.o.JetStream.Conn().IsConnected() {
		return false
	}
	if c := s.o.Member.ActiveConnection(); c != nil {
		switch c.GetState() {
		case connectivity.TransientFailure, connectivity.Shutdown:
			return false
		}
	}
	return true
}

// monitorLeader checks the replica's health, and whether etcd's auth is on, every interval
// until ctx ends.
func (s *Server) monitorLeader(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failed := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, s.authFree.Load())) >= interval {
			// Keep knowing whether etcd's auth is on, which decides whether watches are
			// checked with etcd (watchAuth) even when no read has asked lately.
			go s.checkAuth(ctx)
		}
		if s.healthy() {
			failed = 0
			s.leader.leaderless.Store(false)
			continue
		}
		failed++
		s.leader.leaderless.Store(true)
		if failed >= noLeaderChecks {
			s.leader.streams.cancelAll(rpctypes.ErrGRPCNoLeader, false)
		}
	}
}
