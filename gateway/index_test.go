package gateway

import (
	"math/rand/v2"
	"slices"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestIndexFindsExactlyTheMatchingGroups adds and removes random watchers (single keys,
// prefixes, arbitrary ranges, from-key; with option variants) and checks, for random revisions,
// that the index visits every group with a watcher some event matches, and no other.
func TestIndexFindsExactlyTheMatchingGroups(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	keys := []string{"a", "a/", "a/b", "a/b/c", "a/c", "b", "b/x", "\xff", "\xff\xff", "a\xff", "z"}
	x := newIndex()
	var live []*watcher
	randomOpts := func() watchOpts {
		k := keys[rng.IntN(len(keys))]
		o := watchOpts{key: k, prevKV: rng.IntN(2) == 0, noPut: rng.IntN(4) == 0}
		switch rng.IntN(4) {
		case 1:
			o.end = clientv3.GetPrefixRangeEnd(k)
		case 2:
			o.end = keys[rng.IntN(len(keys))]
			if o.end <= o.key {
				o.end = ""
			}
		case 3:
			o.end = fromKeyEnd
		}
		return o
	}
	for round := range 300 {
		if rng.IntN(3) > 0 || len(live) == 0 {
			w := &watcher{watchOpts: randomOpts(), id: int64(round)}
			x.add(w)
			live = append(live, w)
		} else {
			i := rng.IntN(len(live))
			x.remove(live[i])
			live = slices.Delete(live, i, i+1)
		}
		r := &revision{rev: int64(round + 1)}
		for range 1 + rng.IntN(3) {
			r.events = append(r.events, &mvccpb.Event{Kv: &mvccpb.KeyValue{Key: []byte(keys[rng.IntN(len(keys))])}})
		}
		want := map[*group]bool{}
		for _, w := range live {
			for _, ev := range r.events {
				if w.matches(ev.Kv.Key) {
					want[w.group] = true
				}
			}
		}
		got := map[*group]bool{}
		x.each(r, func(g *group) {
			if got[g] {
				t.Fatalf("round %d: group %+v visited twice", round, g.opts)
			}
			got[g] = true
		})
		for g := range want {
			if !got[g] {
				t.Fatalf("round %d: group %+v (%d watchers) not visited for %v", round, g.opts, len(g.watchers), r.events)
			}
		}
		for g := range got {
			if !want[g] {
				t.Fatalf("round %d: group %+v visited, matches none of %v", round, g.opts, r.events)
			}
		}
		if x.size != len(live) {
			t.Fatalf("round %d: index holds %d watchers, want %d", round, x.size, len(live))
		}
	}
}
