package cache

import (
	"bytes"
	"math"
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Responses keeps encoded range responses for reuse by identical requests: a least recently
// used set bounded by the bytes it holds, not by its number of entries. A response of the
// current keyspace stays valid while no event touches its range, and is dropped by the first
// revision that does (Invalidate); a response pinned to a past revision never changes. Unlike
// a time-to-live cache, it never serves a response older than the revision it reports.
//
// Finding the responses an event touches costs a map lookup for the single-key ones and one
// per distinct prefix length for the prefix ones (the usual LIST); other ranges are few and
// checked one by one.
//
// # Concurrency properties
//
// Safe for concurrent use; one mutex guards everything, held for lookups and updates only.
type Responses struct {
	maxBytes int64

	mu       sync.Mutex
	lru      *simplelru.LRU[string, *response]
	bytes    int64
	rev      int64                             // the last revision invalidated
	exact    map[string]map[*response]struct{} // single-key responses, by key
	prefixes map[string]map[*response]struct{} // prefix responses, by prefix
	lengths  map[int]int                       // prefix lengths in use, with their prefixes
	ranges   map[*response]struct{}            // the other current responses
}

// response is one encoded response and the range it read.
type response struct {
	id       string
	body     []byte
	key, end []byte // as in the request
	pinned   bool
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
	c.exact = make(map[string]map[*response]struct{})
	c.prefixes = make(map[string]map[*response]struct{})
	c.lengths = make(map[int]int)
	c.ranges = make(map[*response]struct{})
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
// if no revision has been invalidated since at, since one could have touched its range. A
// body bigger than an eighth of the bound is not kept, so one huge response cannot empty the
// set.
func (c *Responses) Add(id string, key, end []byte, pinned bool, body []byte, at int64) {
	r := &response{id: id, body: body, key: key, end: end, pinned: pinned}
	size := sizeOf(r)
	if size > c.maxBytes/8 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !pinned && at != c.rev {
		return
	}
	if c.lru.Contains(id) {
		return
	}
	c.lru.Add(id, r)
	c.bytes += size
	if !pinned {
		c.register(r)
	}
	for c.bytes > c.maxBytes {
		c.lru.RemoveOldest()
	}
}

// sizeOf is the memory r takes: its bytes, and about 128 bytes of bookkeeping.
func sizeOf(r *response) int64 { return int64(len(r.body)+len(r.id)+len(r.key)+len(r.end)) + 128 }

// evicted is the LRU's callback for every response it drops.
func (c *Responses) evicted(_ string, r *response) {
	c.bytes -= sizeOf(r)
	if !r.pinned {
		c.unregister(r)
	}
}

// isPrefix reports whether [key, end) is every key with prefix key, and nothing else.
func isPrefix(key, end []byte) bool {
	return len(end) > 0 && !(len(end) == 1 && end[0] == 0) && bytes.Equal(end, prefixEnd(key))
}

func (c *Responses) register(r *response) {
	switch {
	case len(r.end) == 0:
		addTo(c.exact, string(r.key), r)
	case isPrefix(r.key, r.end):
		if addTo(c.prefixes, string(r.key), r) {
			c.lengths[len(r.key)]++
		}
	default:
		c.ranges[r] = struct{}{}
	}
}

func (c *Responses) unregister(r *response) {
	switch {
	case len(r.end) == 0:
		removeFrom(c.exact, string(r.key), r)
	case isPrefix(r.key, r.end):
		if removeFrom(c.prefixes, string(r.key), r) {
			if c.lengths[len(r.key)]--; c.lengths[len(r.key)] == 0 {
				delete(c.lengths, len(r.key))
			}
		}
	default:
		delete(c.ranges, r)
	}
}

// addTo adds r to m[k], reporting whether it is the first there.
func addTo(m map[string]map[*response]struct{}, k string, r *response) (first bool) {
	set := m[k]
	if set == nil {
		set = make(map[*response]struct{})
		m[k] = set
	}
	set[r] = struct{}{}
	return len(set) == 1
}

// removeFrom removes r from m[k], reporting whether it was the last there.
func removeFrom(m map[string]map[*response]struct{}, k string, r *response) (last bool) {
	set := m[k]
	delete(set, r)
	if len(set) == 0 {
		delete(m, k)
		return true
	}
	return false
}

// Invalidate drops every current response whose range holds a key of events, the events of
// revision rev, which follows the last one invalidated.
func (c *Responses) Invalidate(rev int64, events []*mvccpb.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rev = rev
	if c.lru.Len() == 0 {
		return
	}
	var drop []*response
	for _, ev := range events {
		key := ev.Kv.Key
		for r := range c.exact[string(key)] {
			drop = append(drop, r)
		}
		for n := range c.lengths {
			if n <= len(key) {
				for r := range c.prefixes[string(key[:n])] {
					drop = append(drop, r)
				}
			}
		}
		for r := range c.ranges {
			if inRange(key, r.key, readEnd(r.end)) {
				drop = append(drop, r)
			}
		}
	}
	for _, r := range drop {
		c.lru.Remove(r.id) // calls evicted; a response dropped twice is removed once
	}
}

// Stats returns the number of responses held and their bytes.
func (c *Responses) Stats() (n int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.bytes
}
