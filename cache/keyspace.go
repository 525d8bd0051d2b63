package cache

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/google/btree"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// ErrTooBig is returned when the keyspace would outgrow its memory bound.
var ErrTooBig = errors.New("cache: keyspace outgrows its memory bound")

// kvOverhead is the memory a cached key costs beyond its key and value bytes: the decoded
// KeyValue (128 B), its slot in a B-tree node, and the allocator's rounding.
const kvOverhead = 176

// btreeDegree is the B-tree's degree: nodes of up to 63 keys, as etcd's own index uses.
const btreeDegree = 32

// Keyspace is an in-memory ordered index of the current keyspace within a set of prefixes: key
// to latest KeyValue (create and mod revision, version, lease, value), at one revision. It is
// built from a snapshot of the member read at revision R (Insert), then kept current by
// applying every later revision in order (Apply).
//
// # Concurrency properties
//
// Safe for concurrent use. One writer applies revisions; readers either look one key up under a
// read lock (Get) or take a copy-on-write snapshot (View) in constant time and range over it with
// no lock held while revisions keep being applied. KeyValues are shared, never modified: a
// reader must not modify what it is given.
type Keyspace struct {
	spans    []span
	maxBytes int64

	mu    sync.RWMutex
	tree  *btree.BTreeG[*mvccpb.KeyValue] // guarded by mu
	rev   int64                           // guarded by mu
	bytes int64                           // guarded by mu
}

// span is the keys [start, end) of one cached prefix; end nil means no upper bound.
type span struct{ start, end []byte }

func lessKV(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }

// NewKeyspace returns an empty keyspace holding the keys under prefixes (none, or an empty
// prefix: every key), bounded to maxBytes (<= 0: no bound).
func NewKeyspace(prefixes []string, maxBytes int64) *Keyspace {
	k := &Keyspace{maxBytes: maxBytes, tree: btree.NewG(btreeDegree, lessKV)}
	for _, p := range prefixes {
		if p == "" {
			k.spans = nil
			break
		}
		k.spans = append(k.spans, span{start: []byte(p), end: prefixEnd([]byte(p))})
	}
	return k
}

// prefixEnd is the first key after every key with prefix p, or nil if there is none (p is all
// 0xff bytes), as clientv3.GetPrefixRangeEnd.
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// Holds reports whether key is under one of the cached prefixes.
func (k *Keyspace) Holds(key []byte) bool {
	if k.spans == nil {
		return true
	}
	for _, s := range k.spans {
		if bytes.Compare(key, s.start) >= 0 && (s.end == nil || bytes.Compare(key, s.end) < 0) {
			return true
		}
	}
	return false
}

// Covers reports whether every key of the range [key, end) as etcd reads it (end empty: key
// alone; end "\x00": every key >= key) is under one cached prefix, so the keyspace can answer
// for the range.
func (k *Keyspace) Covers(key, end []byte) bool {
	if k.spans == nil {
		return true
	}
	switch {
	case len(end) == 0:
		return k.Holds(key)
	case len(end) == 1 && end[0] == 0:
		end = nil
	case bytes.Compare(end, key) <= 0:
		return true // an empty range
	}
	for _, s := range k.spans {
		if bytes.Compare(key, s.start) < 0 {
			continue
		}
		if s.end == nil || (end != nil && bytes.Compare(end, s.end) <= 0) {
			return true
		}
	}
	return false
}

// Rev is the revision the keyspace reflects.
func (k *Keyspace) Rev() int64 {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.rev
}

// Stats returns the number of keys held and their estimated memory.
func (k *Keyspace) Stats() (keys int, bytes int64) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.tree.Len(), k.bytes
}

func kvSize(kv *mvccpb.KeyValue) int64 { return kvOverhead + int64(len(kv.Key)+len(kv.Value)) }

// Insert adds kvs, read from the member at revision rev, to a keyspace being loaded: every
// Insert of one load names the same revision, or 0 while it is not known yet (a streamed read
// tells its revision at its end), and comes before any Apply. Keys outside the cached prefixes
// are ignored. It fails with ErrTooBig when the keys outgrow the bound.
func (k *Keyspace) Insert(rev int64, kvs []*mvccpb.KeyValue) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if rev != 0 {
		if k.rev != 0 && k.rev != rev {
			return fmt.Errorf("cache: inserting keys read at revision %d into a keyspace at %d", rev, k.rev)
		}
		k.rev = rev
	}
	for _, kv := range kvs {
		if !k.Holds(kv.Key) {
			continue
		}
		if err := k.putLocked(kv); err != nil {
			return err
		}
	}
	return nil
}

func (k *Keyspace) putLocked(kv *mvccpb.KeyValue) error {
	size := kvSize(kv)
	old, had := k.tree.ReplaceOrInsert(kv)
	if had {
		size -= kvSize(old)
	}
	k.bytes += size
	if k.maxBytes > 0 && k.bytes > k.maxBytes {
		return fmt.Errorf("%w: %d keys take about %d bytes, over the bound of %d", ErrTooBig, k.tree.Len(), k.bytes, k.maxBytes)
	}
	return nil
}

// Apply applies revision rev, which must follow the keyspace's revision, with its events: a put
// stores the event's KeyValue, a delete removes the key. A revision is applied whole or not at
// all: on error (ErrTooBig, or a revision out of order) the keyspace is left as it was, at the
// previous revision, and cannot follow any further.
func (k *Keyspace) Apply(rev int64, events []*mvccpb.Event) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if rev != k.rev+1 {
		return fmt.Errorf("cache: applying revision %d to a keyspace at %d", rev, k.rev)
	}
	var delta int64
	for _, ev := range events {
		if !k.Holds(ev.Kv.Key) {
			continue
		}
		if old, had := k.tree.Get(ev.Kv); had {
			delta -= kvSize(old)
		}
		if ev.Type != mvccpb.DELETE {
			delta += kvSize(ev.Kv)
		}
	}
	if k.maxBytes > 0 && k.bytes+delta > k.maxBytes {
		return fmt.Errorf("%w: revision %d would take it to about %d bytes, over the bound of %d", ErrTooBig, rev, k.bytes+delta, k.maxBytes)
	}
	k.rev = rev
	k.bytes += delta
	for _, ev := range events {
		switch {
		case !k.Holds(ev.Kv.Key):
		case ev.Type == mvccpb.DELETE:
			k.tree.Delete(ev.Kv)
		default:
			k.tree.ReplaceOrInsert(ev.Kv)
		}
	}
	return nil
}

// Get returns key's KeyValue (nil if the key does not exist) and the revision it was read at.
func (k *Keyspace) Get(key []byte) (*mvccpb.KeyValue, int64) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	kv, _ := k.tree.Get(&mvccpb.KeyValue{Key: key})
	return kv, k.rev
}

// View returns a read-only snapshot of the keyspace, unaffected by later revisions.
func (k *Keyspace) View() View {
	k.mu.Lock() // Clone marks the shared nodes copy-on-write in the original too
	defer k.mu.Unlock()
	return View{Rev: k.rev, tree: k.tree.Clone()}
}

// View is the keyspace at one revision.
type View struct {
	Rev  int64
	tree *btree.BTreeG[*mvccpb.KeyValue]
}

// ascend calls fn, in key order, for every key of [key, end) as etcd reads the range (end nil:
// key alone; end empty: every key >= key) until fn returns false.
func (v View) ascend(key, end []byte, fn func(*mvccpb.KeyValue) bool) {
	pivot := &mvccpb.KeyValue{Key: key}
	switch {
	case end == nil:
		if kv, ok := v.tree.Get(pivot); ok {
			fn(kv)
		}
	case len(end) == 0:
		v.tree.AscendGreaterOrEqual(pivot, fn)
	default:
		v.tree.AscendRange(pivot, &mvccpb.KeyValue{Key: end}, fn)
	}
}
