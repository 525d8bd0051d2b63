package cache

import (
	"bytes"
	"math"
	"slices"
	"sort"
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Bounds on what Invalidate reads per event, whatever requests clients send. Add does not keep
// a response whose registration would exceed one: its request was answered, it just will not
// be reused. Besides the responses it drops, an event costs one key lookup, at most
// maxLengths prefix lookups and maxLengths+maxScanned comparisons of keys: a few microseconds
// under the lock of the replica that applies it (BenchmarkInvalidateAbuse). It drops at most
// maxBucket*(1+maxLengths)+maxScanned = 4,416 responses, each added by a request of its own,
// in about 100 ns each.
const (
	// maxBucket is the most responses registered under one key or one prefix, so the most one
	// lookup drops at once. Identical requests share one response, so a bucket holds the
	// distinct requests over one key or prefix at the current revision (limits, keys_only,
	// count_only, pages): a handful in use.
	maxBucket = 64
	// maxLengths is the most distinct prefix lengths in use: an event looks its key's prefix
	// of each length up. Kubernetes' prefixes (/registry/<resource>/ and
	// /registry/<resource>/<namespace>/) use some tens.
	maxLengths = 64
	// maxScanned is the most responses of other ranges, each checked against every event.
	maxScanned = 256
	// maxKeyBytes is the longest key or range end of a response that is registered: the
	// comparisons and prefix hashing under the lock never read more of a client's bytes.
	// Kubernetes' keys are a few hundred bytes at most.
	maxKeyBytes = 4 << 10
	// entryOverhead is the memory a response takes beyond its id, body, key and end bytes: the
	// response (112 B), the LRU's entry (80 B) and its slot in the LRU's map, its slot in an
	// index, an index bucket of its own (24 B, a slot in the index's map, a one-slot array)
	// and the allocator's rounding of these and of small id, body and key. Measured at up to
	// 370 B for a small response with a bucket of its own, just after the maps have grown
	// (TestResponsesBookkeeping), 240 B for a pinned one; 448 B leaves room for rounding.
	// Large bodies are counted by their length, not the allocator's size class (up to 12.5%
	// more).
	entryOverhead = 448
)

// Responses keeps encoded range responses for reuse by identical requests: a least recently
// used set bounded by the bytes it holds, not by its number of entries. A response of the
// current keyspace stays valid while no event touches its range, and is dropped by the first
// revision that does (Invalidate); a response pinned to a past revision never changes. Unlike
// a time-to-live cache, it never serves a response older than the revision it reports.
//
// Finding the responses an event touches is bounded work, whatever the requests: each response
// of the current keyspace is registered by its range in one of three indexes, each of bounded
// size where an event reads it.
//   - A single key, under the key: one map lookup per event. At most maxBucket per key.
//   - A range within one prefix, [key, prefixEnd(p)) for a prefix p of key: under p. This is
//     the usual LIST (key = p) and its continuation pages (key past p, as Kubernetes pages).
//     An event looks up its key's prefix of each length in use, at most maxLengths. The
//     ranges under p all end where p does, after the event's key, so those it touches are
//     those starting at or before it: kept in order of key, they are read up to the first
//     that starts after it. At most maxBucket per prefix.
//   - Any other range, from-key ranges included: in a set scanned for every event, of at most
//     maxScanned.
//
// A response whose bucket is full, or whose prefix would be of one length too many, goes to
// the scanned set instead; one that fits nowhere, or whose key or end is longer than
// maxKeyBytes, is answered but not kept. So a client sending many distinct ranges over keys
// no event touches fills no index beyond its bound, and no more responses of the current
// keyspace are kept than the indexes take; pinned ones are only bounded by bytes. An empty
// range (key at or after end) is registered nowhere: no event can touch it.
//
// # Concurrency properties
//
// Safe for concurrent use; one mutex guards everything, held for lookups and updates only.
type Responses struct {
	maxBytes int64

	mu       sync.Mutex
	lru      *simplelru.LRU[string, *response] // guarded by mu
	bytes    int64                             // guarded by mu
	rev      int64                             // the last revision invalidated; guarded by mu
	exact    map[string]*set                   // single-key responses, by key; guarded by mu
	prefixes map[string]*set                   // responses within a prefix, by prefix; guarded by mu
	lengths  map[int]int                       // prefix lengths in use, with their number of prefixes; guarded by mu
	ranges   set                               // the other current responses; guarded by mu
}

// response is one encoded response and the range it read.
type response struct {
	id       string
	body     []byte
	key, end []byte // as in the request
	in       place  // where it is registered
	n        int    // in prefixes: the length of its prefix
	slot     int    // its position in its set, if in exact or ranges
}

// place is where a response is registered for Invalidate to find it.
type place uint8

const (
	inNone     place = iota // pinned, an empty range, or taken out by Invalidate
	inExact                 // in exact, under its key
	inPrefixes              // in prefixes, under its key's first n bytes
	inRanges                // in ranges, the scanned set
)

// set is the responses registered in one place: a prefix's in order of key (insert,
// removeOrdered), the others in no order (add, remove), each knowing its slot there.
type set struct{ rs []*response }

func (s *set) add(r *response) {
	r.slot = len(s.rs)
	s.rs = append(s.rs, r)
}

func (s *set) remove(r *response) {
	last := s.rs[len(s.rs)-1]
	s.rs[r.slot], last.slot = last, r.slot
	s.rs[len(s.rs)-1] = nil
	s.rs = s.rs[:len(s.rs)-1]
}

// insert adds r after the responses whose key is not after its own.
func (s *set) insert(r *response) {
	i := sort.Search(len(s.rs), func(i int) bool { return bytes.Compare(s.rs[i].key, r.key) > 0 })
	s.rs = slices.Insert(s.rs, i, r)
}

// removeOrdered finds r by its key and removes it.
func (s *set) removeOrdered(r *response) {
	i := sort.Search(len(s.rs), func(i int) bool { return bytes.Compare(s.rs[i].key, r.key) >= 0 })
	for s.rs[i] != r {
		i++
	}
	s.rs = slices.Delete(s.rs, i, i+1)
}

// NewResponses returns an empty set bounded to maxBytes, valid from revision rev.
func NewResponses(maxBytes int64, rev int64) *Responses {
	c := &Responses{maxBytes: maxBytes}
	c.lru, _ = simplelru.NewLRU(math.MaxInt32, c.evicted) // cannot fail with a positive size
	c.Reset(rev)
	return c
}

// Reset drops every response; the keyspace is now at revision rev.
func (c *Responses) Reset(rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Purge()
	c.bytes, c.rev = 0, rev
	c.exact = make(map[string]*set)
	c.prefixes = make(map[string]*set)
	c.lengths = make(map[int]int)
	c.ranges = set{}
}

// Get returns the response stored under id and the revision it is valid at, if it holds one
// valid at minRev or later.
func (c *Responses) Get(id string, minRev int64) (body []byte, rev int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rev < minRev {
		return nil, 0, false
	}
	r, ok := c.lru.Get(id)
	if !ok {
		return nil, 0, false
	}
	return r.body, c.rev, true
}

// Add stores body, the response to the request id ranging over [key, end) (etcd's form), as
// read at revision at. A pinned response (to a past revision) is kept as is; any other only
// if no revision has been invalidated since at, since one could have touched its range, and
// if the index its range belongs in has room (see Responses). A body bigger than an eighth of
// the bound is not kept, so one huge response cannot empty the set.
func (c *Responses) Add(id string, key, end []byte, pinned bool, body []byte, at int64) {
	r := &response{id: id, body: body, key: key, end: end}
	size := sizeOf(r)
	if size > c.maxBytes/8 || !pinned && (len(key) > maxKeyBytes || len(end) > maxKeyBytes) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !pinned && at != c.rev || c.lru.Contains(id) {
		return
	}
	if !pinned && !c.registerLocked(r) {
		return
	}
	c.lru.Add(id, r)
	c.bytes += size
	for c.bytes > c.maxBytes {
		c.lru.RemoveOldest()
	}
}

// sizeOf is the memory r takes: its bytes, its key once more (as an index's key), and
// entryOverhead.
func sizeOf(r *response) int64 {
	return int64(len(r.body)+len(r.id)+2*len(r.key)+len(r.end)) + entryOverhead
}

// evicted is the LRU's callback for every response it drops.
func (c *Responses) evicted(_ string, r *response) {
	c.bytes -= sizeOf(r)
	c.unregisterLocked(r)
}

// prefixLen returns the length of the longest prefix p of key with prefixEnd(p) == end, if
// there is one: [key, end) then holds only keys with prefix p. Since prefixEnd increments the
// last byte below 0xff and drops the 0xff bytes after it, p is end with its last byte
// decremented, followed by as many 0xff bytes as key has there.
func prefixLen(key, end []byte) (n int, ok bool) {
	m := len(end)
	if m == 0 || end[m-1] == 0 || len(key) < m || !bytes.Equal(key[:m-1], end[:m-1]) || key[m-1] != end[m-1]-1 {
		return 0, false
	}
	for n = m; n < len(key) && key[n] == 0xff; n++ {
	}
	return n, true
}

// registerLocked registers r where Invalidate will find it, reporting false if the index its
// range belongs in, and the scanned set, are full.
func (c *Responses) registerLocked(r *response) bool {
	n, prefixed := prefixLen(r.key, r.end)
	switch end := readEnd(r.end); {
	case len(end) > 0 && bytes.Compare(r.key, end) >= 0:
		r.in = inNone // empty
		return true
	case end == nil:
		if s, _ := bucket(c.exact, r.key, true); s != nil {
			r.in = inExact
			s.add(r)
			return true
		}
	case prefixed:
		s, created := bucket(c.prefixes, r.key[:n], c.lengths[n] > 0 || len(c.lengths) < maxLengths)
		if created {
			c.lengths[n]++
		}
		if s != nil {
			r.in, r.n = inPrefixes, n
			s.insert(r)
			return true
		}
	}
	if len(c.ranges.rs) < maxScanned {
		r.in = inRanges
		c.ranges.add(r)
		return true
	}
	return false
}

// unregisterLocked removes r from its index, if it is still there.
func (c *Responses) unregisterLocked(r *response) {
	switch r.in {
	case inExact:
		s := c.exact[string(r.key)]
		if s.remove(r); len(s.rs) == 0 {
			delete(c.exact, string(r.key))
		}
	case inPrefixes:
		s := c.prefixes[string(r.key[:r.n])]
		if s.removeOrdered(r); len(s.rs) == 0 {
			c.removePrefixLocked(r.key[:r.n])
		}
	case inRanges:
		c.ranges.remove(r)
	}
	r.in = inNone
}

// removePrefixLocked removes the bucket of prefix p, now empty.
func (c *Responses) removePrefixLocked(p []byte) {
	delete(c.prefixes, string(p))
	if c.lengths[len(p)]--; c.lengths[len(p)] == 0 {
		delete(c.lengths, len(p))
	}
}

// bucket returns m[k] if it has room for one more response, creating it if it is missing and
// create allows, or nil.
func bucket(m map[string]*set, k []byte, create bool) (s *set, created bool) {
	s = m[string(k)]
	switch {
	case s == nil && create:
		s = new(set)
		m[string(k)] = s
		return s, true
	case s != nil && len(s.rs) >= maxBucket:
		return nil, false
	}
	return s, false
}

// Invalidate drops every current response whose range holds a key of events, the events of
// revision rev, which follows the last one invalidated. Beyond those it drops, it reads a
// bounded number of responses per event (see Responses).
func (c *Responses) Invalidate(rev int64, events []*mvccpb.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rev = rev
	if c.lru.Len() == 0 {
		return
	}
	// The responses an event touches in a key's or a prefix's bucket leave it at once, a run
	// at a time; the scanned ones as they are removed.
	var drop []*response
	for _, ev := range events {
		key := ev.Kv.Key
		if s := c.exact[string(key)]; s != nil {
			drop = take(drop, s.rs)
			delete(c.exact, string(key))
		}
		for n := range c.lengths {
			if n > len(key) {
				continue
			}
			s := c.prefixes[string(key[:n])]
			if s == nil {
				continue
			}
			// In order of key, all ending after key: in range up to the first that starts
			// after it.
			i := 0
			for i < len(s.rs) && inRange(key, s.rs[i].key, readEnd(s.rs[i].end)) {
				i++
			}
			drop = take(drop, s.rs[:i])
			if s.rs = slices.Delete(s.rs, 0, i); len(s.rs) == 0 {
				c.removePrefixLocked(key[:n]) // deleting from lengths while ranging over it is safe
			}
		}
		for _, r := range c.ranges.rs {
			if inRange(key, r.key, readEnd(r.end)) {
				drop = append(drop, r)
			}
		}
	}
	for _, r := range drop {
		c.lru.Remove(r.id) // calls evicted; a response dropped twice is removed once
	}
}

// take appends rs to drop, marked as out of their index.
func take(drop, rs []*response) []*response {
	for _, r := range rs {
		r.in = inNone
	}
	return append(drop, rs...)
}

// Stats returns the number of responses held and their bytes.
func (c *Responses) Stats() (n int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.bytes
}
