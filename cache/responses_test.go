package cache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

func TestResponses(t *testing.T) {
	c := NewResponses(1<<20, 10)
	body := []byte("body")
	add := func(id, key, end string, pinned bool, at int64) {
		var e []byte
		if end != "" {
			e = []byte(end)
		}
		c.Add(id, []byte(key), e, pinned, body, at)
	}
	add("get", "k", "", false, 10)
	add("list", "p/", "p0", false, 10)
	add("from", "m", "\x00", false, 10)
	add("range", "r/a", "r/c", false, 10)
	add("pinned", "p/", "p0", true, 7)
	add("stale", "x", "", false, 9) // read before revision 10: not kept
	held := func() []string {
		var ids []string
		for _, id := range []string{"get", "list", "from", "range", "pinned", "stale"} {
			if _, _, ok := c.Get(id, 0); ok {
				ids = append(ids, id)
			}
		}
		return ids
	}
	if got, want := held(), []string{"get", "list", "from", "range", "pinned"}; !slices.Equal(got, want) {
		t.Fatalf("held %v, want %v", got, want)
	}
	if _, rev, _ := c.Get("get", 0); rev != 10 {
		t.Errorf("valid at %d, want 10", rev)
	}
	if _, _, ok := c.Get("get", 11); ok {
		t.Error("a response valid at 10 served for a read that needs 11")
	}
	put := func(rev int64, key string) {
		c.Invalidate(rev, []*mvccpb.Event{{Kv: &mvccpb.KeyValue{Key: []byte(key)}}})
	}
	put(11, "a") // touches nothing held
	if got, want := held(), []string{"get", "list", "from", "range", "pinned"}; !slices.Equal(got, want) {
		t.Fatalf("after an unrelated put: held %v, want %v", got, want)
	}
	if _, rev, _ := c.Get("get", 11); rev != 11 {
		t.Errorf("valid at %d, want 11", rev)
	}
	put(12, "p/x")
	put(13, "r/b")
	put(14, "zz")
	if got, want := held(), []string{"get", "pinned"}; !slices.Equal(got, want) {
		t.Fatalf("after puts under the list, the range and the from-key range: held %v, want %v", got, want)
	}
	put(15, "k")
	if got, want := held(), []string{"pinned"}; !slices.Equal(got, want) {
		t.Fatalf("after a put of the key: held %v, want %v", got, want)
	}
	if n, bytes := c.Stats(); n != 1 || bytes != sizeOf(&response{id: "pinned", key: []byte("p/"), end: []byte("p0"), body: body}) {
		t.Errorf("stats %d responses, %d bytes", n, bytes)
	}
	checkIndexes(t, c)
}

func TestResponsesBoundedByBytes(t *testing.T) {
	body := make([]byte, 1000)
	size := sizeOf(&response{id: "id-0000", key: []byte("k"), body: body})
	c := NewResponses(8*size, 1)
	for i := range 20 {
		c.Add(fmt.Sprintf("id-%04d", i), []byte("k"), nil, false, body, 1)
	}
	n, bytes := c.Stats()
	if bytes > 8*size || n == 0 {
		t.Fatalf("%d responses, %d bytes, over the bound", n, bytes)
	}
	if _, _, ok := c.Get("id-0019", 0); !ok {
		t.Error("the newest response was evicted")
	}
	if _, _, ok := c.Get("id-0000", 0); ok {
		t.Error("the oldest response was kept")
	}
	checkIndexes(t, c)
	c.Invalidate(2, []*mvccpb.Event{{Kv: &mvccpb.KeyValue{Key: []byte("k")}}})
	if n, bytes := c.Stats(); n != 0 || bytes != 0 {
		t.Errorf("after invalidating: %d responses, %d bytes", n, bytes)
	}
	checkIndexes(t, c)
}

// TestPrefixLen checks prefixLen against its definition: the longest prefix p of key with
// prefixEnd(p) == end, over keys of bytes where prefixEnd has its edge cases.
func TestPrefixLen(t *testing.T) {
	alphabet := []byte{0x00, 0x01, 'a', 'b', 0xfe, 0xff}
	var keys [][]byte
	var gen func(prefix []byte)
	gen = func(prefix []byte) {
		keys = append(keys, prefix)
		if len(prefix) < 4 {
			for _, b := range alphabet {
				gen(append(slices.Clip(prefix), b))
			}
		}
	}
	gen(nil)
	for _, key := range keys {
		for _, end := range keys {
			want, wantOK := -1, false
			for n := len(key); n >= 0 && !wantOK; n-- {
				if e := prefixEnd(key[:n]); e != nil && bytes.Equal(e, end) {
					want, wantOK = n, true
				}
			}
			if n, ok := prefixLen(key, end); ok != wantOK || ok && n != want {
				t.Fatalf("prefixLen(%q, %q) = %d, %v; want %d, %v", key, end, n, ok, want, wantOK)
			}
		}
	}
}

// TestResponsesWithinPrefix checks ranges that end where a prefix of their key ends, as
// Kubernetes' continuation pages do: registered under the prefix, dropped by an event within
// them, kept by an event under the same prefix before their start.
func TestResponsesWithinPrefix(t *testing.T) {
	for _, tt := range []struct {
		name, key, end string
		prefix         string // the bucket it is registered under
		drop, keep     []string
	}{
		{name: "list", key: "/registry/pods/", end: "/registry/pods0", prefix: "/registry/pods/",
			drop: []string{"/registry/pods/", "/registry/pods/a", "/registry/pods/\xff"},
			keep: []string{"/registry/pods", "/registry/pods0", "/registry/podsa"}},
		{name: "page", key: "/registry/pods/ns/b\x00", end: "/registry/pods0", prefix: "/registry/pods/",
			drop: []string{"/registry/pods/ns/b\x00", "/registry/pods/ns/c", "/registry/pods/z"},
			keep: []string{"/registry/pods/", "/registry/pods/ns/a", "/registry/pods/ns/b", "/registry/pods0"}},
		{name: "page of a namespace", key: "/registry/pods/ns/b\x00", end: "/registry/pods/ns0", prefix: "/registry/pods/ns/",
			drop: []string{"/registry/pods/ns/c"},
			keep: []string{"/registry/pods/ns/a", "/registry/pods/nt/c", "/registry/pods/a"}},
		{name: "prefix ending in 0xff", key: "a\xff\xffm", end: "b", prefix: "a\xff\xff",
			drop: []string{"a\xff\xffm", "a\xff\xff\xff"},
			keep: []string{"a\xff\xff", "a\xff\xffa", "a\xfe", "a", "b"}},
		{name: "end in 0x00", key: "\xff", end: "\xff\x00", prefix: "",
			drop: []string{"\xff"}, keep: []string{"\xfe", "\xff\x00"}}, // not a prefix range: scanned
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, ev := range append(slices.Clone(tt.drop), tt.keep...) {
				c := NewResponses(1<<20, 1)
				c.Add("id", []byte(tt.key), []byte(tt.end), false, []byte("body"), 1)
				r, _ := c.lru.Peek("id")
				if tt.prefix != "" && (r.in != inPrefixes || string(r.key[:r.n]) != tt.prefix) {
					t.Fatalf("registered in %d under %q, want under prefix %q", r.in, r.key[:r.n], tt.prefix)
				}
				c.Invalidate(2, []*mvccpb.Event{{Kv: &mvccpb.KeyValue{Key: []byte(ev)}}})
				if _, _, held := c.Get("id", 0); held != slices.Contains(tt.keep, ev) {
					t.Errorf("after an event at %q: held %v, want %v", ev, held, !held)
				}
				checkIndexes(t, c)
			}
		})
	}
}

// TestResponsesEmptyRange checks that a range no key can be in is kept without registering it.
func TestResponsesEmptyRange(t *testing.T) {
	c := NewResponses(1<<20, 1)
	c.Add("id", []byte("b"), []byte("a"), false, []byte("body"), 1)
	c.Invalidate(2, []*mvccpb.Event{{Kv: &mvccpb.KeyValue{Key: []byte("a")}}, {Kv: &mvccpb.KeyValue{Key: []byte("b")}}})
	if _, _, ok := c.Get("id", 2); !ok {
		t.Error("an empty range's response was dropped")
	}
	if got := sizesOf(c); got != (indexSizes{Held: 1}) {
		t.Errorf("indexes %+v, want the response in none", got)
	}
}

// indexSizes is how much of each index is in use.
type indexSizes struct {
	Held      int // responses
	Scanned   int // responses in the scanned set
	Lengths   int // prefix lengths in use
	MaxBucket int // responses in the largest key or prefix bucket
}

func sizesOf(c *Responses) indexSizes {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := indexSizes{Held: c.lru.Len(), Scanned: len(c.ranges.rs), Lengths: len(c.lengths)}
	for _, m := range []map[string]*set{c.exact, c.prefixes} {
		for _, b := range m {
			s.MaxBucket = max(s.MaxBucket, len(b.rs))
		}
	}
	return s
}

// checkIndexes checks that every response held, and only those, is registered where it says,
// and that the bytes and prefix lengths counted are right.
func checkIndexes(t *testing.T, c *Responses) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	registered := 0
	lengths := map[int]int{}
	for _, k := range []struct {
		in place
		m  map[string]*set
	}{{inExact, c.exact}, {inPrefixes, c.prefixes}} {
		for key, s := range k.m {
			if len(s.rs) == 0 || len(s.rs) > maxBucket {
				t.Errorf("bucket %q holds %d responses", key, len(s.rs))
			}
			if k.in == inPrefixes {
				lengths[len(key)]++
			}
			for i, r := range s.rs {
				at := r.key
				if r.in == inPrefixes {
					at = r.key[:r.n]
				}
				if r.in != k.in || string(at) != key || k.in == inExact && r.slot != i {
					t.Errorf("response %q in bucket %q slot %d says %d, %q, %d", r.id, key, i, r.in, at, r.slot)
				}
				if k.in == inPrefixes && (!bytes.Equal(r.end, prefixEnd([]byte(key))) || i > 0 && bytes.Compare(s.rs[i-1].key, r.key) > 0) {
					t.Errorf("response %q [%q, %q) in prefix %q slot %d: not ending with the prefix, or out of order", r.id, r.key, r.end, key, i)
				}
			}
			registered += len(s.rs)
		}
	}
	for i, r := range c.ranges.rs {
		if r.in != inRanges || r.slot != i {
			t.Errorf("response %q in the scanned set at %d says %d, %d", r.id, i, r.in, r.slot)
		}
	}
	registered += len(c.ranges.rs)
	if diff := cmp.Diff(lengths, c.lengths); diff != "" {
		t.Errorf("prefix lengths (-counted, +kept):\n%s", diff)
	}
	if len(c.ranges.rs) > maxScanned || len(c.lengths) > maxLengths {
		t.Errorf("%d scanned, %d prefix lengths: over the bounds", len(c.ranges.rs), len(c.lengths))
	}
	var bytes int64
	for _, id := range c.lru.Keys() {
		r, _ := c.lru.Peek(id)
		bytes += sizeOf(r)
		if r.in != inNone {
			registered--
		}
	}
	if registered != 0 || bytes != c.bytes {
		t.Errorf("%d more responses registered than held; %d bytes held, %d counted", registered, bytes, c.bytes)
	}
}

// TestResponsesBounds checks that adding far more distinct requests of one kind than the
// indexes take leaves them at their bounds, and that an event still drops what it must.
func TestResponsesBounds(t *testing.T) {
	long := strings.Repeat("x", maxKeyBytes)
	for _, tt := range []struct {
		name     string
		req      func(i int) (key, end string)
		event    string
		want     indexSizes // after adding
		wantHeld int        // after the event
	}{
		// The review's abuse: ranges over keys no event touches, none of a prefix's form.
		{name: "ranges", req: func(i int) (string, string) { return fmt.Sprintf("x/%05d", i), fmt.Sprintf("x/%05d\x01", i) },
			event: "x/00007", want: indexSizes{Held: maxScanned, Scanned: maxScanned}, wantHeld: maxScanned - 1},
		{name: "from keys", req: func(i int) (string, string) { return fmt.Sprintf("x/%05d", i), "\x00" },
			event: "y" /* after every key */, want: indexSizes{Held: maxScanned, Scanned: maxScanned}},
		// Once a key's bucket is full, its responses fall back to the scanned set.
		{name: "one key", req: func(i int) (string, string) { return "k", "" },
			event: "k", want: indexSizes{Held: maxBucket + maxScanned, Scanned: maxScanned, MaxBucket: maxBucket}},
		{name: "pages of one prefix", req: func(i int) (string, string) { return fmt.Sprintf("p/m%05d", i), "p0" },
			event: "p/z", want: indexSizes{Held: maxBucket + maxScanned, Scanned: maxScanned, Lengths: 1, MaxBucket: maxBucket}},
		{name: "prefixes of all lengths", req: func(i int) (string, string) { return long[:i+1], long[:i] + "y" },
			event: long, want: indexSizes{Held: maxLengths + maxScanned, Scanned: maxScanned, Lengths: maxLengths, MaxBucket: 1}},
		{name: "prefixes of one length", req: func(i int) (string, string) {
			k := fmt.Sprintf("p/%05d", i)
			return k, string(prefixEnd([]byte(k)))
		}, event: "p/00003/a", want: indexSizes{Held: 10 * maxScanned, Lengths: 1, MaxBucket: 1}, wantHeld: 10*maxScanned - 1},
		{name: "long keys", req: func(i int) (string, string) { return long + fmt.Sprint(i), "" },
			event: "x"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, pinned := NewResponses(1<<30, 1), NewResponses(1<<30, 1)
			for i := range 10 * maxScanned {
				key, end := tt.req(i)
				id := fmt.Sprintf("%d:%s:%s", i, key, end)
				c.Add(id, []byte(key), []byte(end), false, []byte("body"), 1)
				pinned.Add(id, []byte(key), []byte(end), true, []byte("body"), 1)
			}
			if diff := cmp.Diff(tt.want, sizesOf(c)); diff != "" {
				t.Errorf("after adding %d (-want +got):\n%s", 10*maxScanned, diff)
			}
			checkIndexes(t, c)
			if n, _ := pinned.Stats(); n != 10*maxScanned {
				t.Errorf("%d pinned responses held, want all %d: they are not registered", n, 10*maxScanned)
			}
			c.Invalidate(2, []*mvccpb.Event{{Kv: &mvccpb.KeyValue{Key: []byte(tt.event)}}})
			if n, _ := c.Stats(); n != tt.wantHeld {
				t.Errorf("after an event at %.20q: %d held, want %d", tt.event, n, tt.wantHeld)
			}
			checkIndexes(t, c)
			// The room freed takes new responses.
			key, end := tt.req(0)
			c.Add("again", []byte(key), []byte(end), false, []byte("body"), 2)
			if _, _, ok := c.Get("again", 2); !ok && len(key) <= maxKeyBytes {
				t.Error("after the event: a new response was not kept")
			}
		})
	}
}

// TestResponsesMatchModel checks Invalidate against the obvious model over random ranges
// and events on keys where prefixEnd has its edge cases: a response is held exactly while no
// event since it was added is in its range.
func TestResponsesMatchModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	alphabet := []byte{0x00, 'a', 'b', 0xfe, 0xff}
	randomKey := func() []byte {
		k := make([]byte, 1+rng.IntN(3))
		for i := range k {
			k[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return k
	}
	type entry struct{ key, end []byte }
	live := map[string]entry{} // the model: the responses no event has touched
	c := NewResponses(1<<30, 0)
	for rev := int64(1); rev <= 4000; rev++ {
		for range rng.IntN(4) {
			key, end := randomKey(), []byte(nil)
			switch rng.IntN(5) {
			case 0:
				end = []byte{0}
			case 1:
				end = randomKey()
			case 2, 3:
				end = prefixEnd(key[:rng.IntN(len(key)+1)])
			}
			id := fmt.Sprintf("%q %q", key, end)
			c.Add(id, key, end, false, []byte("body"), rev-1)
			_, _, held := c.Get(id, 0)
			if _, ok := live[id]; ok && !held {
				t.Fatalf("revision %d: %s no longer held", rev, id)
			}
			if !held && sizesOf(c).Scanned < maxScanned {
				t.Fatalf("revision %d: %s not kept, with room to keep it", rev, id)
			}
			if held {
				live[id] = entry{key, end}
			}
		}
		var events []*mvccpb.Event
		for range rng.IntN(3) {
			k := randomKey()
			events = append(events, &mvccpb.Event{Kv: &mvccpb.KeyValue{Key: k}})
			for id, e := range live {
				if inRange(k, e.key, readEnd(e.end)) {
					delete(live, id)
				}
			}
		}
		c.Invalidate(rev, events)
		if n, _ := c.Stats(); n != len(live) {
			t.Fatalf("revision %d: %d held, the model holds %d", rev, n, len(live))
		}
		for id := range live {
			if _, _, ok := c.Get(id, rev); !ok {
				t.Fatalf("revision %d: %s dropped, untouched", rev, id)
			}
		}
		if rev%100 == 0 {
			checkIndexes(t, c)
		}
	}
}

// TestResponsesBookkeeping checks that entryOverhead covers what a response takes beyond its
// bytes, measured as the heap's growth while small responses are added, each with an index
// bucket of its own (the most bookkeeping one takes). The counts straddle the points where
// the maps grow, when they have the most room per entry.
func TestResponsesBookkeeping(t *testing.T) {
	if testing.Short() {
		t.Skip("measures the heap")
	}
	for _, kind := range []struct {
		name string
		end  func(key []byte) []byte
	}{
		{"key", func([]byte) []byte { return nil }},
		{"prefix", prefixEnd},
	} {
		for _, n := range []int{900, 1800, 3600, 7200, 14400, 28800} {
			var before, after runtime.MemStats
			c := NewResponses(1<<40, 1)
			payload := 0
			runtime.GC()
			runtime.ReadMemStats(&before)
			for i := range n {
				key := []byte(fmt.Sprintf("/registry/pods/ns/%06d/", i)) // no spare capacity
				id := fmt.Sprintf("\n\x18%s", key)
				body := make([]byte, 24)
				end := kind.end(key)
				payload += len(id) + len(body) + len(key) + len(end)
				c.Add(id, key, end, false, body, 1)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			held, accounted := c.Stats()
			if held != n {
				t.Fatalf("%d of %d responses held", held, n)
			}
			grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			t.Logf("%s, %d responses: heap +%d B, %d B counted; bookkeeping %d B a response, %d counted",
				kind.name, n, grown, accounted, (grown-int64(payload))/int64(n), (accounted-int64(payload))/int64(n))
			if grown > accounted {
				t.Errorf("%s, %d responses: the heap grew by %d B, more than the %d B counted", kind.name, n, grown, accounted)
			}
			runtime.KeepAlive(c)
		}
	}
}

// BenchmarkInvalidateAbuse measures Invalidate, one event a revision, after clients have
// added as many distinct ranges as a 64 MiB set takes (about 160,000 small ones):
//   - ranges: ranges over keys no event touches, the review's abuse, which used to be
//     scanned one by one for every event;
//   - worst: besides those, every index full where the event's key leads: maxBucket
//     continuation pages of each of maxLengths prefixes of the key, all starting after it,
//     so that the event looks every prefix up and drops nothing.
func BenchmarkInvalidateAbuse(b *testing.B) {
	key := []byte("/registry/pods/default/web-5d8f7c9b4-x2x7q-" + strings.Repeat("abcdefgh", 4))
	for _, bench := range []struct {
		name string
		fill func(add func(key, end []byte))
	}{
		{"ranges", func(add func(key, end []byte)) {
			for i := range 200_000 {
				k := fmt.Appendf(nil, "/abuse/%08d", i)
				add(k, append(slices.Clip(k), 1))
			}
		}},
		{"worst", func(add func(key, end []byte)) {
			for i := range 200_000 {
				k := fmt.Appendf(nil, "/abuse/%08d", i)
				add(k, append(slices.Clip(k), 1))
			}
			for n := 1; n <= len(key); n++ {
				for i := range 2 * maxBucket {
					p := key[:n]
					add(fmt.Appendf(slices.Clip(p), "\xfe%04d", i), prefixEnd(p))
				}
			}
		}},
	} {
		b.Run(bench.name, func(b *testing.B) {
			c := NewResponses(64<<20, 1)
			i := 0
			bench.fill(func(k, end []byte) {
				i++
				c.Add(fmt.Sprintf("request %d", i), k, end, false, []byte("a response of some kvs"), 1)
			})
			held, _ := c.Stats()
			s := sizesOf(c)
			b.Logf("%d requests, %d responses held: %+v", i, held, s)
			events := []*mvccpb.Event{{Kv: &mvccpb.KeyValue{Key: key}}}
			rev := int64(1)
			b.ReportAllocs()
			for b.Loop() {
				rev++
				c.Invalidate(rev, events)
			}
			if n, _ := c.Stats(); n != held {
				b.Fatalf("%d responses held after the events, %d before: the benchmark should drop none", n, held)
			}
		})
	}
}
