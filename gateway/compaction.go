package gateway

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The event log keeps history etcd may have compacted, but a watch from a past revision must
// get etcd's answer. A create from a past revision asks the member whether its compaction
// reaches that revision. Creates arriving together (a fleet resuming after a replica restart)
// share one question instead of asking one each, and an answer of "not compacted at R" stands
// for compactionAnswerTTL (or until a compaction passes through this replica) for every later
// start revision: etcd compacts rarely (Kubernetes every five minutes), and a watch created in
// the moment after a compaction that this replica has not seen is served from the event log,
// whose events are etcd's, rather than refused.

// compactionAnswerTTL is how long a "not compacted" answer is reused.
const compactionAnswerTTL = time.Second

// compactionProbe is one question to the member: is revision rev compacted, and if so, from
// where? Concurrent creates join it.
type compactionProbe struct {
	rev     int64
	done    chan struct{}
	compact int64 // the member's compact revision if rev was compacted, else 0
	current int64 // the member's revision when it answered (0 if it did not)
}

type compactionProbes struct {
	mu       sync.Mutex
	inflight *compactionProbe
	// Revisions >= clearFrom were not compacted as of clearAt (zero: no standing answer).
	clearFrom int64
	clearAt   time.Time
}

// forget drops the standing answer: a compaction has just passed through.
func (ps *compactionProbes) forget() {
	ps.mu.Lock()
	ps.clearFrom, ps.clearAt = 0, time.Time{}
	ps.mu.Unlock()
}

// memberCompaction returns the member's compact revision if a watch from the past revision rev
// is affected by it (rev is below it, or at it), else 0, and the member's revision as it
// answered (0 if it could not be read). Any error counts as not compacted: the watch is then
// served from the event log.
func (s *Server) memberCompaction(ctx context.Context, rev int64) (compact, current int64) {
	at := max(rev-1, 1) // reading at rev-1 tells whether a watch from rev is affected
	for {
		s.probes.mu.Lock()
		if !s.probes.clearAt.IsZero() && at >= s.probes.clearFrom && time.Since(s.probes.clearAt) < compactionAnswerTTL {
			s.probes.mu.Unlock()
			return 0, 0
		}
		p := s.probes.inflight
		if p == nil {
			p = &compactionProbe{rev: at, done: make(chan struct{})}
			s.probes.inflight = p
			go s.runProbe(p)
		}
		s.probes.mu.Unlock()
		select {
		case <-p.done:
		case <-ctx.Done():
			return 0, 0
		}
		switch {
		case p.compact != 0:
			// The member's compact revision answers every start revision.
			if rev <= p.compact {
				return p.compact, p.current
			}
			return 0, p.current
		case p.rev <= at:
			return 0, p.current // not compacted at or below a revision below ours
		}
		// The probe asked about a later revision than ours; ask our own.
	}
}

// runProbe asks the member about p.rev. A count-only read at p.rev tells (etcd refuses to read
// below its compact revision); only then does a watch from there fetch the compact revision
// itself, which etcd puts in its answer to a compacted watch.
func (s *Server) runProbe(p *compactionProbe) {
	asked := time.Now()
	defer func() {
		s.probes.mu.Lock()
		if s.probes.inflight == p {
			s.probes.inflight = nil
		}
		if p.current != 0 && p.compact == 0 && (s.probes.clearAt.IsZero() || p.rev <= s.probes.clearFrom || asked.After(s.probes.clearAt)) {
			s.probes.clearFrom, s.probes.clearAt = p.rev, asked
		}
		s.probes.mu.Unlock()
		close(p.done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := s.o.Member.Get(ctx, "\x00", clientv3.WithRev(p.rev), clientv3.WithCountOnly(), clientv3.WithSerializable())
	if err == nil {
		p.current = r.Header.Revision
	}
	if !errors.Is(err, rpctypes.ErrCompacted) {
		return
	}
	w := clientv3.NewWatcher(s.o.Member)
	defer w.Close()
	for resp := range w.Watch(ctx, "\x00", clientv3.WithRev(p.rev)) {
		if resp.CompactRevision != 0 {
			p.compact, p.current = resp.CompactRevision, resp.Header.Revision
			return
		}
		if resp.Err() != nil {
			return
		}
	}
}
