package gateway

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A linearizable read, and a watch created "from now", need etcd's current revision: every
// write that completed before the request began is at or below it. Reading it costs etcd a
// quorum round (ReadIndex), so requests share reads: one is in flight at a time, and a request
// that arrives while one is in flight waits for the next one, which starts after the request
// arrived and so sees every write that completed before it. However many requests arrive, the
// member sees at most one probe per round trip.

// probeTimeout bounds one probe, whatever its waiters' deadlines.
const probeTimeout = 5 * time.Second

// revisionProbe shares the probes of a replica.
type revisionProbe struct {
	mu        sync.Mutex
	running   bool
	next      *probeCall // starts when the running probe ends; joined by every later request
	compacted int64      // revisions <= compacted are known compacted: no probe needed
}

// probeCall is one probe and its answer.
type probeCall struct {
	done  chan struct{}
	floor int64 // the lowest past revision its requests read at (0: none); set before it runs
	rev   int64
	err   error
	// floorCompacted: the floor was compacted; rev and err are then those of a second read,
	// at the current revision, so that requests not reading at the floor still get an answer.
	floorCompacted bool
}

// currentRevision returns etcd's current revision, read linearizably after the call began.
func (s *Server) currentRevision(ctx context.Context) (int64, error) { return s.revisionAt(ctx, 0) }

// revisionAt is currentRevision for a read at the past revision at (0: none), which must not
// be beyond etcd's revision: it also fails with etcd's compacted error if at is compacted.
// The probe reads at the lowest such revision of the requests sharing it, so a range at a
// past revision learns of a compaction that completed before it began without a read of its
// own. When that lowest revision is compacted, the probe reads once more at the current
// revision before answering, so the others sharing it are not held up; and a revision known
// compacted is refused at once, so requests at compacted revisions cannot keep the others
// waiting round after round.
func (s *Server) revisionAt(ctx context.Context, at int64) (int64, error) {
	p := &s.probe
	for {
		p.mu.Lock()
		if at != 0 && at <= p.compacted {
			p.mu.Unlock()
			return 0, rpctypes.ErrGRPCCompacted
		}
		c := p.next
		switch {
		case c != nil:
			if at > 0 && (c.floor == 0 || at < c.floor) {
				c.floor = at
			}
		case p.running:
			c = &probeCall{done: make(chan struct{}), floor: at}
			p.next = c
		default:
			c = &probeCall{done: make(chan struct{}), floor: at}
			p.running = true
			go s.runProbes(c)
		}
		p.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		switch {
		case !c.floorCompacted:
			return c.rev, c.err
		case at == c.floor:
			return 0, rpctypes.ErrGRPCCompacted
		case at == 0:
			return c.rev, c.err
		}
		// Another request's revision, below ours, was compacted; ours may be too: ask again.
	}
}

// runProbes runs c, then each probe queued while the previous one ran.
func (s *Server) runProbes(c *probeCall) {
	for c != nil {
		s.probeOnce(c, c.floor)
		if c.floor != 0 && errors.Is(c.err, rpctypes.ErrCompacted) {
			c.floorCompacted = true
			s.probe.mu.Lock()
			s.probe.compacted = max(s.probe.compacted, c.floor)
			s.probe.mu.Unlock()
			s.probeOnce(c, 0)
		}
		close(c.done)

		s.probe.mu.Lock()
		c, s.probe.next = s.probe.next, nil
		if c == nil {
			s.probe.running = false
		}
		s.probe.mu.Unlock()
	}
}

// probeOnce reads etcd's current revision linearizably, at revision at (0: the current one),
// into c.
func (s *Server) probeOnce(c *probeCall, at int64) {
	s.reads.probes.Add(1)
	s.m.probes.Add(context.Background(), 1)
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	r, err := s.o.Member.Get(ctx, "\x00", clientv3.WithCountOnly(), clientv3.WithRev(at))
	c.rev, c.err = 0, err
	if err == nil {
		c.rev = r.Header.Revision
		s.hdr.Store(r.Header)
	}
	s.noteAuth(err)
}

// noteAuth records what a read the member answered without credentials says of its auth: err
// nil means it is off; an auth error, on.
func (s *Server) noteAuth(err error) {
	switch {
	case err == nil:
		s.authFree.Store(time.Now().UnixNano())
		s.authOn.Store(false)
	case isAuthError(err):
		s.authOn.Store(true)
	}
}

// isAuthError reports whether err is etcd refusing a read without credentials: its auth is on.
func isAuthError(err error) bool {
	for _, e := range []error{rpctypes.ErrUserEmpty, rpctypes.ErrPermissionDenied, rpctypes.ErrInvalidAuthToken, rpctypes.ErrAuthOldRevision} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
