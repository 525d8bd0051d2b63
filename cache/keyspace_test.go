package cache

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/testing/protocmp"
)

// model is a keyspace's whole history, kept the simple way: every revision's full state.
type model struct {
	states []map[string]*mvccpb.KeyValue // states[rev]
	events [][]*mvccpb.Event             // events[rev]
}

func newModel() *model {
	return &model{states: []map[string]*mvccpb.KeyValue{{}}, events: [][]*mvccpb.Event{nil}}
}

func (m *model) rev() int64 { return int64(len(m.states) - 1) }

// step makes one revision of random puts and deletes over keys.
func (m *model) step(rng *rand.Rand, keys []string) {
	rev := m.rev() + 1
	cur := m.states[rev-1]
	next := make(map[string]*mvccpb.KeyValue, len(cur))
	for k, v := range cur {
		next[k] = v
	}
	var evs []*mvccpb.Event
	touched := map[string]bool{}
	for range 1 + rng.IntN(3) {
		k := keys[rng.IntN(len(keys))]
		if touched[k] {
			continue
		}
		touched[k] = true
		prev := next[k]
		if prev != nil && rng.IntN(3) == 0 {
			evs = append(evs, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(k), ModRevision: rev}, PrevKv: prev})
			delete(next, k)
			continue
		}
		kv := &mvccpb.KeyValue{Key: []byte(k), ModRevision: rev, CreateRevision: rev, Version: 1,
			Value: fmt.Appendf(nil, "v%d", rng.IntN(5)), Lease: int64(rng.IntN(2))}
		if prev != nil {
			kv.CreateRevision, kv.Version = prev.CreateRevision, prev.Version+1
		}
		evs = append(evs, &mvccpb.Event{Type: mvccpb.PUT, Kv: kv, PrevKv: prev})
		next[k] = kv
	}
	m.states = append(m.states, next)
	m.events = append(m.events, evs)
}

// loaded returns a keyspace loaded with the state at rev, as from a snapshot.
func (m *model) loaded(t *testing.T, rev int64, prefixes []string) *Keyspace {
	t.Helper()
	ks := NewKeyspace(prefixes, 0)
	var kvs []*mvccpb.KeyValue
	for _, kv := range m.states[rev] {
		kvs = append(kvs, kv)
	}
	if err := ks.Insert(rev, kvs); err != nil {
		t.Fatal(err)
	}
	return ks
}

func randomRange(rng *rand.Rand, keys []string) *pb.RangeRequest {
	r := &pb.RangeRequest{Key: []byte(keys[rng.IntN(len(keys))])}
	switch rng.IntN(4) {
	case 1:
		r.RangeEnd = []byte{0}
	case 2:
		r.RangeEnd = []byte(keys[rng.IntN(len(keys))])
	case 3:
		r.Key, r.RangeEnd = []byte("a/"), []byte("a0")
	}
	switch rng.IntN(4) {
	case 0:
		r.Limit = int64(rng.IntN(4))
	case 1:
		r.Limit = math.MaxInt64 - int64(rng.IntN(2))
	}
	r.SortOrder = pb.RangeRequest_SortOrder(rng.IntN(3))
	r.SortTarget = pb.RangeRequest_SortTarget(rng.IntN(5))
	r.KeysOnly = rng.IntN(4) == 0
	r.CountOnly = rng.IntN(6) == 0
	if rng.IntN(4) == 0 {
		r.MinModRevision = int64(rng.IntN(40))
	}
	if rng.IntN(4) == 0 {
		r.MaxCreateRevision = int64(rng.IntN(40))
	}
	return r
}

// TestRangeRollsBack checks that a range at a past revision, read from the current keyspace
// and rolled back through the newer events, equals the same range read from a keyspace loaded
// at that revision.
func TestRangeRollsBack(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	keys := []string{"a", "a/1", "a/2", "a/3", "b", "c\x00", "c\xff"}
	m := newModel()
	for range 5 {
		m.step(rng, keys)
	}
	ks := m.loaded(t, m.rev(), nil)
	for range 60 {
		m.step(rng, keys)
		if err := ks.Apply(m.rev(), m.events[m.rev()]); err != nil {
			t.Fatal(err)
		}
	}
	v := ks.View()
	for i := range 2000 {
		at := 5 + rng.Int64N(m.rev()-4)
		var newer []*mvccpb.Event
		for rev := at + 1; rev <= m.rev(); rev++ {
			newer = append(newer, m.events[rev]...)
		}
		r := randomRange(rng, keys)
		got := v.Range(r, at, newer)
		want := m.loaded(t, at, nil).View().Range(r, at, nil)
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Fatalf("request %d %v at %d (-rolled back from scratch, +rolled back):\n%s", i, r, at, diff)
		}
	}
}

func TestRangeKeyMatchesView(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	keys := []string{"a", "b", "c"}
	m := newModel()
	for range 20 {
		m.step(rng, keys)
	}
	ks := m.loaded(t, m.rev(), nil)
	for range 500 {
		r := randomRange(rng, keys)
		r.RangeEnd = nil
		got, rev := ks.RangeKey(r)
		want := ks.View().Range(r, rev, nil)
		if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
			t.Fatalf("%v: (-view, +key):\n%s", r, diff)
		}
	}
}

func TestKeyspacePrefixes(t *testing.T) {
	ks := NewKeyspace([]string{"/registry/pods/", "\xff\xff"}, 0)
	for _, tt := range []struct {
		key, end string
		want     bool
	}{
		{"/registry/pods/a", "", true},
		{"/registry/pods/", "/registry/pods0", true},
		{"/registry/pods/a", "/registry/pods/b", true},
		{"/registry/pod", "/registry/pods0", false},
		{"/registry/pods/", "/registry/pods1", false},
		{"/registry/pods/", "\x00", false},
		{"\xff\xff", "\x00", true}, // a prefix of 0xff bytes has no end
		{"\xff\xffa", "", true},
		{"\xff", "\x00", false},
		{"/registry/nodes/a", "", false},
		{"/registry/z", "/registry/a", true}, // empty
	} {
		if got := ks.Covers([]byte(tt.key), []byte(tt.end)); got != tt.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tt.key, tt.end, got, tt.want)
		}
	}
	kv := func(k string) *mvccpb.KeyValue { return &mvccpb.KeyValue{Key: []byte(k), ModRevision: 1} }
	if err := ks.Insert(1, []*mvccpb.KeyValue{kv("/registry/pods/a"), kv("/registry/nodes/a")}); err != nil {
		t.Fatal(err)
	}
	if n, _ := ks.Stats(); n != 1 {
		t.Errorf("keys held = %d, want 1 (only the cached prefix)", n)
	}
	if err := ks.Apply(2, []*mvccpb.Event{{Type: mvccpb.PUT, Kv: kv("/registry/nodes/b")}}); err != nil {
		t.Fatal(err)
	}
	if err := ks.Apply(4, nil); err == nil {
		t.Error("applying revision 4 after 2: no error")
	}
}

func TestKeyspaceBound(t *testing.T) {
	big := make([]byte, 1000)
	ks := NewKeyspace(nil, 3*(kvOverhead+1001))
	kvs := []*mvccpb.KeyValue{{Key: []byte("a"), Value: big}, {Key: []byte("b"), Value: big}}
	if err := ks.Insert(1, kvs); err != nil {
		t.Fatal(err)
	}
	// Overwriting a key does not grow it.
	if err := ks.Apply(2, []*mvccpb.Event{{Kv: &mvccpb.KeyValue{Key: []byte("a"), Value: big}}}); err != nil {
		t.Fatal(err)
	}
	// A revision that deletes a, then puts c and d, would outgrow the bound: none of it applies.
	err := ks.Apply(3, []*mvccpb.Event{{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("a")}},
		{Kv: &mvccpb.KeyValue{Key: []byte("c"), Value: big}}, {Kv: &mvccpb.KeyValue{Key: []byte("d"), Value: big}},
		{Kv: &mvccpb.KeyValue{Key: []byte("e"), Value: big}}})
	if !errors.Is(err, ErrTooBig) {
		t.Fatalf("Apply over the bound: %v, want ErrTooBig", err)
	}
	if kv, rev := ks.Get([]byte("a")); kv == nil || rev != 2 {
		t.Errorf("after a refused revision: a = %v at %d, want it still there at 2 (no torn revision)", kv, rev)
	}
	if kv, _ := ks.Get([]byte("c")); kv != nil {
		t.Errorf("after a refused revision: c = %v, want none", kv)
	}
	if err := NewKeyspace(nil, 100).Insert(1, kvs); !errors.Is(err, ErrTooBig) {
		t.Fatalf("Insert over the bound: %v, want ErrTooBig", err)
	}
}

// TestRangeHugeLimit checks that a limit of math.MaxInt64, which some clients pass for "no
// limit", returns every key, as etcd does (it does not read one beyond such a limit).
func TestRangeHugeLimit(t *testing.T) {
	ks := NewKeyspace(nil, 0)
	kvs := []*mvccpb.KeyValue{{Key: []byte("a"), ModRevision: 1}, {Key: []byte("b"), ModRevision: 1}}
	if err := ks.Insert(1, kvs); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int64{math.MaxInt64, math.MaxInt64 - 1} {
		resp := ks.View().Range(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), Limit: limit}, 1, nil)
		if len(resp.Kvs) != 2 || resp.Count != 2 || resp.More {
			t.Errorf("limit %d: %d kvs, count %d, more %v; want 2, 2, false", limit, len(resp.Kvs), resp.Count, resp.More)
		}
		if got, _ := ks.RangeKey(&pb.RangeRequest{Key: []byte("a"), Limit: limit}); len(got.Kvs) != 1 {
			t.Errorf("GET with limit %d: %d kvs, want 1", limit, len(got.Kvs))
		}
	}
}
