package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/watchgate/watchgate/cache"
)

// ReadStats counts how a replica has answered Range requests since it started.
type ReadStats struct {
	// Cached Ranges were answered from the keyspace cache, Responses of them by reusing a
	// response the response cache held.
	Cached, Responses int64
	// PassedThrough Ranges were forwarded to the member: outside the cached prefixes, older
	// than the history held, carrying an auth token, or while the cache was not live.
	PassedThrough int64
	// Probes are the linearizable revision probes sent to the member, shared by every
	// linearizable read (and from-now watch create) that waited for them.
	Probes int64
	// FellBack linearizable reads were forwarded to the member because the cache did not
	// reach etcd's revision within CacheWait.
	FellBack int64
}

// readCounters backs ReadStats.
type readCounters struct {
	cached, responses, passed, probes, fellBack atomic.Int64
}

// ReadStats returns the replica's read counters.
func (s *Server) ReadStats() ReadStats {
	c := &s.reads
	return ReadStats{Cached: c.cached.Load(), Responses: c.responses.Load(),
		PassedThrough: c.passed.Load(), Probes: c.probes.Load(), FellBack: c.fellBack.Load()}
}

// The read path. A Range within the cached prefixes is answered from the keyspace cache with
// etcd's consistency: a linearizable one (etcd's default) first learns etcd's current revision
// from the shared probe and waits, up to CacheWait, for the cache to reach it, so it reflects
// every write that completed before it began, through whichever replica; a serializable one is
// answered at once. A range at a past revision is rolled back through the history ring, and
// one the ring no longer covers passes through, as does every request the cache cannot answer
// exactly as etcd would: invalid ones (etcd words the error), ones carrying an auth token
// (etcd checks permissions) or requiring a leader (etcd checks it has one), and all of them
// while the member's auth is on, the cache is being built, or the replica has lost its event
// log or member connection (its cache no longer advances). Whether auth is on is known from
// reads made without credentials: the probe, and for a serializable read a serializable one
// of its own (shared) when the last answer is older than LeaderCheckInterval. Multi-key ranges
// go through the response cache: identical requests reuse one encoded response while no event
// touches their range, and identical requests arriving together are computed once.

// rangeCached answers r from the cache if it can; handled false means the caller passes r
// through to the member.
func (s *Server) rangeCached(ctx context.Context, r *pb.RangeRequest) (resp *pb.RangeResponse, handled bool, err error) {
	ks := s.hub.keys.Load()
	if ks == nil || !validRange(r) || carriesAuth(ctx) || requiresLeader(ctx) || !ks.Covers(r.Key, r.RangeEnd) ||
		s.leader.leaderless.Load() {
		return nil, false, nil
	}
	var minRev, checked int64
	if r.Serializable && time.Since(time.Unix(0, s.authFree.Load())) >= s.o.LeaderCheckInterval {
		// Whether auth is on, asked as the read itself would be: without consensus.
		if !s.checkAuth(ctx) {
			return nil, false, nil
		}
	}
	if !r.Serializable {
		start := time.Now()
		if r.Revision > 0 && r.Revision < ks.Rev() {
			checked = r.Revision // the probe tells whether it is compacted
		}
		rev, err := s.revisionAt(ctx, checked)
		if checked != 0 && errors.Is(err, rpctypes.ErrGRPCCompacted) {
			return nil, true, err
		}
		if err != nil {
			return nil, false, nil // the member answers, with its own error if it fails again
		}
		minRev = rev
		if s.hub.waitKeys(ctx, rev, s.o.CacheWait) == nil {
			s.reads.fellBack.Add(1)
			s.m.reads.Add(ctx, 1, answerFallback)
			return nil, false, nil
		}
		s.m.readWait.Record(ctx, time.Since(start).Seconds())
	}
	if ks = s.hub.keys.Load(); ks == nil {
		return nil, false, nil
	}
	cur := ks.Rev()
	switch {
	case cur < minRev:
		return nil, false, nil // a keyspace rebuilt meanwhile, behind what the read needs
	case r.Revision > cur:
		return nil, false, nil // a future revision, or one the cache has not reached: etcd knows
	case r.Revision > 0 && r.Revision < cur && checked == 0:
		if !r.Serializable {
			return nil, false, nil // the cache reached the revision while waiting: unchecked
		}
		// Ask the member, without consensus as the read itself: a count-only read of one key
		// at the revision costs it an index lookup.
		_, err := s.o.Member.Get(ctx, "\x00", clientv3.WithRev(r.Revision), clientv3.WithCountOnly(), clientv3.WithSerializable())
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			return nil, true, rpctypes.ErrGRPCCompacted
		case err != nil:
			return nil, false, nil
		}
	}
	return s.answer(ctx, ks, r, minRev)
}

// answer reads r, a request the cache may answer, from ks at revision minRev or later.
func (s *Server) answer(ctx context.Context, ks *cache.Keyspace, r *pb.RangeRequest, minRev int64) (*pb.RangeResponse, bool, error) {
	if len(r.RangeEnd) == 0 && r.Revision <= 0 {
		resp, rev := ks.RangeKey(r)
		resp.Header = s.header(rev)
		s.countCached(ctx, false)
		return resp, true, nil
	}
	if s.hub.responses == nil {
		return s.computed(ctx, ks, r)
	}

	id := responseID(r)
	if body, rev, ok := s.hub.responses.Get(id, minRev); ok {
		s.countCached(ctx, true)
		return bodyResponse(s.header(rev), body), true, nil
	}
	ch := s.flight.DoChan(id, func() (any, error) {
		resp, at, ok := s.evaluate(ks, r)
		if !ok {
			return encoded{}, nil
		}
		body, err := proto.Marshal(resp)
		if err != nil {
			panic(fmt.Sprintf("gateway: encoding a range response: %v", err)) // cannot fail
		}
		s.hub.responses.Add(id, r.Key, r.RangeEnd, r.Revision > 0, body, at)
		return encoded{body: body, rev: at, ok: true}, nil
	})
	var e encoded
	select {
	case res := <-ch:
		e = res.Val.(encoded)
	case <-ctx.Done():
		return nil, true, status.FromContextError(ctx.Err()).Err()
	}
	if e.ok && e.rev < minRev {
		// Computed by a request that began before this one and read an older revision.
		return s.computed(ctx, ks, r)
	}
	if !e.ok {
		return nil, false, nil
	}
	s.countCached(ctx, false)
	return bodyResponse(s.header(e.rev), e.body), true, nil
}

// computed answers r from ks without the response cache.
func (s *Server) computed(ctx context.Context, ks *cache.Keyspace, r *pb.RangeRequest) (*pb.RangeResponse, bool, error) {
	resp, at, ok := s.evaluate(ks, r)
	if !ok {
		return nil, false, nil
	}
	resp.Header = s.header(at)
	s.countCached(ctx, false)
	return resp, true, nil
}

// encoded is a range response computed once for identical concurrent requests.
type encoded struct {
	body []byte
	rev  int64 // the revision it was read at
	ok   bool  // false: the cache could not answer
}

// evaluate reads r from ks: at its current revision (r.Revision 0, or the current one), or
// rolled back through history. ok is false if history does not reach r.Revision.
func (s *Server) evaluate(ks *cache.Keyspace, r *pb.RangeRequest) (resp *pb.RangeResponse, at int64, ok bool) {
	if r.Revision <= 0 {
		v := ks.View()
		return v.Range(r, v.Rev, nil), v.Rev, true
	}
	v, newer, ok := s.hub.history(r.Revision)
	if !ok {
		return nil, 0, false
	}
	return v.Range(r, r.Revision, newer), v.Rev, true
}

func (s *Server) countCached(ctx context.Context, reused bool) {
	s.reads.cached.Add(1)
	if reused {
		s.reads.responses.Add(1)
		s.m.reads.Add(ctx, 1, answerResponse)
		return
	}
	s.m.reads.Add(ctx, 1, answerCache)
}

// The reads metric's answers.
var (
	answerCache       = metric.WithAttributeSet(attribute.NewSet(attribute.String("answer", "cache")))
	answerResponse    = metric.WithAttributeSet(attribute.NewSet(attribute.String("answer", "response")))
	answerPassthrough = metric.WithAttributeSet(attribute.NewSet(attribute.String("answer", "passthrough")))
	answerFallback    = metric.WithAttributeSet(attribute.NewSet(attribute.String("answer", "fallback")))
)

// validRange reports whether etcd would accept r: it has a key and known sort options.
func validRange(r *pb.RangeRequest) bool {
	_, order := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]
	_, target := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]
	return len(r.Key) > 0 && order && target
}

// carriesAuth reports whether the call carries etcd auth credentials, which etcd checks and
// the cache cannot.
func carriesAuth(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	return ok && (len(md.Get(rpctypes.TokenFieldNameGRPC)) > 0 || len(md.Get("authorization")) > 0)
}

// responseID identifies r's response in the response cache: its encoding, without the
// serializable flag, which does not change the answer.
func responseID(r *pb.RangeRequest) string {
	serializable := r.Serializable
	r.Serializable = false
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	r.Serializable = serializable
	if err != nil {
		panic(fmt.Sprintf("gateway: encoding a range request: %v", err)) // cannot fail
	}
	return string(b)
}

// bodyResponse is a range response with header hdr and the encoded rest body (its kvs, more
// and count fields), sent as is.
func bodyResponse(hdr *pb.ResponseHeader, body []byte) *pb.RangeResponse {
	resp := &pb.RangeResponse{Header: hdr}
	resp.ProtoReflect().SetUnknown(body)
	return resp
}

// checkAuth asks the member whether its auth is off, with a serializable count-only read of
// one key and no credentials, shared by the reads asking together; it reports whether the
// cache may answer (auth off).
func (s *Server) checkAuth(ctx context.Context) bool {
	ch := s.authCheck.DoChan("", func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		defer cancel()
		_, err := s.o.Member.Get(ctx, "\x00", clientv3.WithCountOnly(), clientv3.WithSerializable())
		s.noteAuth(err)
		return err == nil, nil
	})
	select {
	case res := <-ch:
		return res.Val.(bool)
	case <-ctx.Done():
		return false
	}
}
