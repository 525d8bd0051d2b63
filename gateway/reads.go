package gateway

import "sync/atomic"

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
