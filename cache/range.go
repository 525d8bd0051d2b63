package cache

import (
	"bytes"
	"math"
	"slices"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Range answers r as etcd answers a valid range request (a key, and known sort options) at
// revision at, which is v.Rev or older: the same keys and values in the same order, the same
// count and more, every option honoured (limit, sort order and target, keys_only, count_only,
// min/max mod and create revision). For an older revision, newer holds, oldest first, every
// event of the revisions after at up to v.Rev, each with its prev_kv (nil only when the event
// created the key): the range is read from the view and rolled back through them. The
// response's header is left for the caller. Its KeyValues are shared with the keyspace, and
// must not be modified.
func (v View) Range(r *pb.RangeRequest, at int64, newer []*mvccpb.Event) *pb.RangeResponse {
	key, end := r.Key, readEnd(r.RangeEnd)
	return evaluate(r, func(fn func(*mvccpb.KeyValue) bool) { v.ascend(key, end, fn) }, rollbackOf(key, end, at, newer))
}

// RangeKey answers r, a valid request for one key (no range_end) at the current revision, and
// returns the revision it was read at. It takes no snapshot: the cheap path of a GET.
func (k *Keyspace) RangeKey(r *pb.RangeRequest) (*pb.RangeResponse, int64) {
	kv, rev := k.Get(r.Key)
	return evaluate(r, func(fn func(*mvccpb.KeyValue) bool) {
		if kv != nil {
			fn(kv)
		}
	}, nil), rev
}

// evaluate answers r over the keys ascend visits in key order, with rollback (in key order)
// replacing the state of the keys it names.
func evaluate(r *pb.RangeRequest, ascend func(func(*mvccpb.KeyValue) bool), rollback []rolledBack) *pb.RangeResponse {
	// What etcd's index hands to its range: every key when the results are re-sorted or
	// filtered (they are cut to the limit afterwards), else one beyond the limit, to tell more.
	fetch := 0
	if r.Limit > 0 && r.Limit < math.MaxInt64 && isDefaultOrdering(r) && !hasRevisionFilters(r) {
		fetch = int(r.Limit) + 1
	}
	var kvs []*mvccpb.KeyValue
	count := 0
	take := func(kv *mvccpb.KeyValue) {
		count++
		if !r.CountOnly && (fetch == 0 || len(kvs) < fetch) {
			kvs = append(kvs, kv)
		}
	}
	i := 0 // next rolled-back key
	ascend(func(kv *mvccpb.KeyValue) bool {
		for ; i < len(rollback) && bytes.Compare(rollback[i].key, kv.Key) < 0; i++ {
			if rollback[i].kv != nil {
				take(rollback[i].kv)
			}
		}
		if i < len(rollback) && bytes.Equal(rollback[i].key, kv.Key) {
			if rollback[i].kv != nil {
				take(rollback[i].kv)
			}
			i++
			return true
		}
		take(kv)
		return true
	})
	for ; i < len(rollback); i++ {
		if rollback[i].kv != nil {
			take(rollback[i].kv)
		}
	}

	resp := &pb.RangeResponse{Count: int64(count)}
	if r.CountOnly {
		return resp
	}
	kvs = filterKVs(kvs, r)
	sortKVs(kvs, r)
	if r.Limit > 0 && len(kvs) > int(r.Limit) {
		kvs, resp.More = kvs[:r.Limit], true
	}
	switch {
	case r.KeysOnly && r.SortTarget != pb.RangeRequest_VALUE:
		// etcd reads such a range from its index alone: no value, and no lease either.
		for i, kv := range kvs {
			kvs[i] = &mvccpb.KeyValue{Key: kv.Key, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Version: kv.Version}
		}
	case r.KeysOnly:
		for i, kv := range kvs {
			kvs[i] = &mvccpb.KeyValue{Key: kv.Key, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease}
		}
	}
	resp.Kvs = kvs
	return resp
}

// readEnd converts a request's range_end to ascend's: nil for one key, empty for every key from
// key on ("\x00"), else the end itself.
func readEnd(end []byte) []byte {
	switch {
	case len(end) == 0:
		return nil
	case len(end) == 1 && end[0] == 0:
		return []byte{}
	}
	return end
}

// inRange reports whether k is in [key, end) as ascend reads it.
func inRange(k, key, end []byte) bool {
	switch {
	case end == nil:
		return bytes.Equal(k, key)
	case len(end) == 0:
		return bytes.Compare(k, key) >= 0
	}
	return bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0
}

// rolledBack is one key's state at an older revision: kv nil if it did not exist.
type rolledBack struct {
	key []byte
	kv  *mvccpb.KeyValue
}

// rollbackOf returns, in key order, the state at revision at of every key in [key, end) that
// an event of newer (the revisions after at) changed: the prev_kv of its first such event.
func rollbackOf(key, end []byte, at int64, newer []*mvccpb.Event) []rolledBack {
	var out []rolledBack
	var seen map[string]bool
	for _, ev := range newer {
		if ev.Kv.ModRevision <= at || !inRange(ev.Kv.Key, key, end) || seen[string(ev.Kv.Key)] {
			continue
		}
		if seen == nil {
			seen = make(map[string]bool)
		}
		seen[string(ev.Kv.Key)] = true
		out = append(out, rolledBack{key: ev.Kv.Key, kv: ev.PrevKv})
	}
	slices.SortFunc(out, func(a, b rolledBack) int { return bytes.Compare(a.key, b.key) })
	return out
}

// NeedsPrevKV reports whether rolling ev back needs its prev_kv: it does unless ev created
// its key.
func NeedsPrevKV(ev *mvccpb.Event) bool {
	return ev.Type == mvccpb.DELETE || ev.Kv.Version > 1
}

// isDefaultOrdering reports whether r's results come in etcd's index order (by key, ascending).
func isDefaultOrdering(r *pb.RangeRequest) bool {
	return r.SortOrder == pb.RangeRequest_NONE ||
		(r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND)
}

func hasRevisionFilters(r *pb.RangeRequest) bool {
	return r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
}

// filterKVs drops the KeyValues outside r's mod and create revision bounds, keeping the order.
func filterKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) []*mvccpb.KeyValue {
	if !hasRevisionFilters(r) {
		return kvs
	}
	return slices.DeleteFunc(kvs, func(kv *mvccpb.KeyValue) bool {
		return (r.MaxModRevision != 0 && kv.ModRevision > r.MaxModRevision) ||
			(r.MinModRevision != 0 && kv.ModRevision < r.MinModRevision) ||
			(r.MaxCreateRevision != 0 && kv.CreateRevision > r.MaxCreateRevision) ||
			(r.MinCreateRevision != 0 && kv.CreateRevision < r.MinCreateRevision)
	})
}

// sortKVs orders kvs as etcd does: a target other than the key sorts ascending unless told
// otherwise, and the sort is sort.Sort's (not stable), so keys that tie come out in the order
// etcd's own sort leaves them.
func sortKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) {
	order := r.SortOrder
	if r.SortTarget != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND
	}
	if order == pb.RangeRequest_NONE || (r.SortTarget == pb.RangeRequest_KEY && order == pb.RangeRequest_ASCEND) {
		return
	}
	var s sort.Interface
	switch r.SortTarget {
	case pb.RangeRequest_KEY:
		s = byKey{kvs}
	case pb.RangeRequest_VERSION:
		s = byVersion{kvs}
	case pb.RangeRequest_CREATE:
		s = byCreate{kvs}
	case pb.RangeRequest_MOD:
		s = byMod{kvs}
	case pb.RangeRequest_VALUE:
		s = byValue{kvs}
	default:
		return
	}
	if order == pb.RangeRequest_DESCEND {
		s = sort.Reverse(s)
	}
	sort.Sort(s)
}

type kvList []*mvccpb.KeyValue

func (l kvList) Len() int      { return len(l) }
func (l kvList) Swap(i, j int) { l[i], l[j] = l[j], l[i] }

type (
	byKey     struct{ kvList }
	byVersion struct{ kvList }
	byCreate  struct{ kvList }
	byMod     struct{ kvList }
	byValue   struct{ kvList }
)

func (s byKey) Less(i, j int) bool     { return bytes.Compare(s.kvList[i].Key, s.kvList[j].Key) < 0 }
func (s byVersion) Less(i, j int) bool { return s.kvList[i].Version < s.kvList[j].Version }
func (s byCreate) Less(i, j int) bool  { return s.kvList[i].CreateRevision < s.kvList[j].CreateRevision }
func (s byMod) Less(i, j int) bool     { return s.kvList[i].ModRevision < s.kvList[j].ModRevision }
func (s byValue) Less(i, j int) bool   { return bytes.Compare(s.kvList[i].Value, s.kvList[j].Value) < 0 }
