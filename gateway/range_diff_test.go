package gateway_test

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/internal/testenv"
)

// The range differential test: rounds of random writes (to etcd directly and through the
// gateways), then many random raw RangeRequests sent to etcd and to two gateway replicas, one
// holding the whole history in memory and one holding only the last few revisions, and the
// whole responses (kvs, more, count, header revision) and errors (gRPC code and message)
// compared. Then Kubernetes-style paginated lists, with writes between the pages, compared page
// by page.

// rangeSeedEnv names the environment variable that replays TestRangeDifferential's seed.
const rangeSeedEnv = "WATCHGATE_RANGE_SEED"

// rangeOutcome is everything a client can tell of a Range: the response, its header reduced to
// the revision (the cluster and member ids and the raft term are the member's), or the error's
// gRPC code and message.
type rangeOutcome struct {
	Resp *pb.RangeResponse
	Code codes.Code
	Msg  string
}

// doRange sends r to kv and returns the outcome.
func doRange(ctx context.Context, kv pb.KVClient, r *pb.RangeRequest) rangeOutcome {
	resp, err := kv.Range(ctx, r)
	if err != nil {
		s := status.Convert(err)
		return rangeOutcome{Code: s.Code(), Msg: s.Message()}
	}
	resp = proto.Clone(resp).(*pb.RangeResponse)
	if resp.Header != nil {
		resp.Header = &pb.ResponseHeader{Revision: resp.Header.Revision}
	}
	return rangeOutcome{Resp: resp}
}

// waitApplied waits until every srv has applied revision rev from the event log.
func waitApplied(ctx context.Context, t *testing.T, rev int64, srvs ...*gateway.Server) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for _, s := range srvs {
		for s.Applied() < rev {
			select {
			case <-ctx.Done():
				t.Fatalf("replica applied revision %d, want %d: %v", s.Applied(), rev, ctx.Err())
			case <-tick.C:
			}
		}
	}
}

// waitReady waits until every srv has caught up with the log and loaded its keyspace cache.
func waitReady(ctx context.Context, t *testing.T, srvs ...*gateway.Server) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for _, s := range srvs {
		for !s.Ready() {
			select {
			case <-ctx.Done():
				t.Fatalf("replica not ready: %v", ctx.Err())
			case <-tick.C:
			}
		}
	}
}

// Keys the differential test writes: every suffix under every prefix, including keys with the
// bytes 0x00 and 0xff, and top-level keys that sort before and after every prefix.
var (
	diffKeyPrefixes = []string{"a/", "a/b/", "c/", ""}
	diffKeySuffixes = []string{"1", "2", "x", "\x00", "\xff", "\x00\xff", "z\xff\xff"}
	// diffListPrefixes are the prefixes the reads list, some matching nothing, some ending in
	// 0xff (whose range end drops trailing 0xff bytes, or becomes "\x00": from the key on).
	diffListPrefixes = []string{"a/", "a/b/", "c/", "a/\xff", "\xff", "\x00", "z", "a", "b/"}
)

// diffWorld is the differential test's deployment and random state.
type diffWorld struct {
	t       *testing.T
	rng     *rand.Rand
	p       *parts
	keys    []string
	writers []*clientv3.Client // etcd directly and both gateways
	etcd    pb.KVClient
	gws     []diffGateway
	lease   clientv3.LeaseID // 0: none granted
	compact int64            // the last compact revision, 0 if none
	cur     int64            // etcd's revision as the reads began
	bad     int              // differences so far
	// outcomes counts etcd's answers to the reads: "OK", or an error's code and message.
	outcomes map[string]int
}

// diffGateway is one replica under comparison.
type diffGateway struct {
	name string
	srv  *gateway.Server
	kv   pb.KVClient
}

// TestRangeDifferential is the differential test described above. Its seed is logged; set
// WATCHGATE_RANGE_SEED to replay one.
func TestRangeDifferential(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(rangeSeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s: %v", rangeSeedEnv, err)
		}
	}
	t.Logf("seed %d (replay with %s=%d)", seed, rangeSeedEnv, seed)

	ctx := testenv.Context(t, 2*time.Minute)
	p := newParts(t, ctx)
	p.runIngest(t, ctx)
	full, fullClient := p.runGateway(t, ctx, func(o *gateway.Options) { o.HistoryRevisions = 100000 })
	short, shortClient := p.runGateway(t, ctx, func(o *gateway.Options) { o.HistoryRevisions = 5 })
	w := &diffWorld{
		t:        t,
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		p:        p,
		writers:  []*clientv3.Client{p.member, fullClient, shortClient},
		outcomes: map[string]int{},
		etcd:     pb.NewKVClient(p.member.ActiveConnection()),
		gws: []diffGateway{
			{name: "gateway (history 100000)", srv: full, kv: pb.NewKVClient(fullClient.ActiveConnection())},
			{name: "gateway (history 5)", srv: short, kv: pb.NewKVClient(shortClient.ActiveConnection())},
		},
	}
	for _, pre := range diffKeyPrefixes {
		for _, suf := range diffKeySuffixes {
			w.keys = append(w.keys, pre+suf)
		}
	}
	waitReady(ctx, t, full, short)

	const rounds, readsPerRound = 8, 250
	compactions := 0
	for round := range rounds {
		for range 20 + w.rng.IntN(30) {
			w.write(ctx)
		}
		if round%3 == 2 {
			// Compact a little way back, alternately through a gateway (as Kubernetes does)
			// and on etcd directly, which no gateway sees pass: reads of the revisions it
			// removed must get etcd's compacted error all the same.
			now := testenv.Rev(ctx, t, p.member)
			if at := now - 10 - w.rng.Int64N(5); at > w.compact {
				c := fullClient
				if compactions%2 == 1 {
					c = p.member
				}
				if _, err := c.Compact(ctx, at); err != nil {
					t.Fatalf("compact at %d: %v", at, err)
				}
				w.compact = at
				compactions++
			}
		}
		w.sync(ctx)
		for range readsPerRound {
			w.compare(ctx, w.randomRange(), fmt.Sprintf("round %d", round))
		}
		for i := range 2 {
			w.paginate(ctx, fmt.Sprintf("round %d list %d", round, i))
		}
	}

	// The reads covered etcd's errors, each with its code and text.
	t.Logf("etcd's answers: %v", w.outcomes)
	for _, err := range []error{rpctypes.ErrGRPCEmptyKey, rpctypes.ErrGRPCInvalidSortOption,
		rpctypes.ErrGRPCFutureRev, rpctypes.ErrGRPCCompacted} {
		if s := status.Convert(err); w.outcomes[s.Code().String()+": "+s.Message()] == 0 {
			t.Errorf("no read drew etcd's %q", s.Message())
		}
	}
	for _, g := range w.gws {
		st := g.srv.ReadStats()
		t.Logf("%s: %+v", g.name, st)
		if st.Cached == 0 {
			t.Errorf("%s answered no range from its cache: %+v", g.name, st)
		}
	}
}

// sync waits until both gateways have applied etcd's current revision, and records it.
func (w *diffWorld) sync(ctx context.Context) {
	w.t.Helper()
	w.cur = testenv.Rev(ctx, w.t, w.p.member)
	for _, g := range w.gws {
		waitApplied(ctx, w.t, w.cur, g.srv)
	}
}

func (w *diffWorld) key() string { return w.keys[w.rng.IntN(len(w.keys))] }

func (w *diffWorld) value() string {
	if w.rng.IntN(8) == 0 {
		return "" // empty values, and many equal ones: ties when sorting by value
	}
	return fmt.Sprintf("%c%d", "ab\x00\xff"[w.rng.IntN(4)], w.rng.IntN(4))
}

// write makes one random write through a random writer: a put (sometimes with a lease), a
// delete, a range delete, a multi-key txn, a lease grant or a lease revoke.
func (w *diffWorld) write(ctx context.Context) {
	t := w.t
	t.Helper()
	c := w.writers[w.rng.IntN(len(w.writers))]
	var err error
	switch n := w.rng.IntN(100); {
	case n < 40:
		var opts []clientv3.OpOption
		if w.lease != 0 && w.rng.IntN(4) == 0 {
			opts = append(opts, clientv3.WithLease(w.lease))
		}
		_, err = c.Put(ctx, w.key(), w.value(), opts...)
	case n < 52:
		_, err = c.Delete(ctx, w.key())
	case n < 58:
		if w.rng.IntN(2) == 0 {
			pre := diffListPrefixes[w.rng.IntN(len(diffListPrefixes))]
			_, err = c.Delete(ctx, pre, clientv3.WithPrefix())
		} else {
			k, end := w.key(), w.key()
			_, err = c.Delete(ctx, min(k, end), clientv3.WithRange(max(k, end)))
		}
	case n < 85:
		perm := w.rng.Perm(len(w.keys)) // a txn may not touch a key twice
		var then, els []clientv3.Op
		for i := range 2 + w.rng.IntN(3) {
			k := w.keys[perm[i]]
			switch {
			case w.rng.IntN(4) == 0:
				then = append(then, clientv3.OpDelete(k))
			case w.lease != 0 && w.rng.IntN(4) == 0:
				then = append(then, clientv3.OpPut(k, w.value(), clientv3.WithLease(w.lease)))
			default:
				then = append(then, clientv3.OpPut(k, w.value()))
			}
		}
		els = append(els, clientv3.OpPut(w.keys[perm[5]], w.value()), clientv3.OpPut(w.keys[perm[6]], w.value()))
		_, err = c.Txn(ctx).If(clientv3.Compare(clientv3.Version(w.keys[perm[0]]), ">", 0)).Then(then...).Else(els...).Commit()
	case n < 93:
		if w.lease == 0 {
			l, gerr := c.Grant(ctx, 600) // outlives the test: no expiry writes while reading
			if gerr != nil {
				t.Fatalf("grant: %v", gerr)
			}
			w.lease = l.ID
		}
		_, err = c.Put(ctx, w.key(), w.value(), clientv3.WithLease(w.lease))
	default:
		if w.lease != 0 {
			_, err = c.Revoke(ctx, w.lease) // deletes its keys in one revision
			w.lease = 0
		}
	}
	if err != nil {
		t.Fatalf("write: %v", err)
	}
}

// revision draws a RangeRequest revision: current (0, negative or explicit), recent past,
// older, beyond the short replica's history, compacted, the compact revision itself, future.
func (w *diffWorld) revision() int64 {
	cur, floor := w.cur, max(w.compact, 1)
	between := func(lo, hi int64) int64 { // a revision in [lo, hi], clamped to [floor, cur]
		lo, hi = max(lo, floor), min(hi, cur)
		if hi < lo {
			return cur
		}
		return lo + w.rng.Int64N(hi-lo+1)
	}
	switch n := w.rng.IntN(20); {
	case n < 7:
		return 0
	case n < 8:
		return -1 - w.rng.Int64N(3)
	case n < 10:
		return cur
	case n < 12:
		return between(cur-4, cur-1) // in both replicas' history
	case n < 14:
		return between(floor, cur) // older
	case n < 16:
		return between(floor, cur-6) // beyond the short replica's history
	case n < 17:
		if w.compact > 1 {
			return 1 + w.rng.Int64N(w.compact-1) // compacted
		}
		return 1
	case n < 18:
		return floor
	case n < 19:
		return cur + 1 + w.rng.Int64N(3) // future
	default:
		return cur + 1000
	}
}

// randomRange draws a RangeRequest covering every option, valid or not.
func (w *diffWorld) randomRange() *pb.RangeRequest {
	r := &pb.RangeRequest{}
	switch n := w.rng.IntN(40); {
	case n < 10: // one key, sometimes one that was never written
		r.Key = []byte(w.key())
		if w.rng.IntN(5) == 0 {
			r.Key = []byte("a/missing")
		}
	case n < 20: // a prefix
		pre := diffListPrefixes[w.rng.IntN(len(diffListPrefixes))]
		r.Key, r.RangeEnd = []byte(pre), []byte(clientv3.GetPrefixRangeEnd(pre))
	case n < 24: // from a key on
		r.Key, r.RangeEnd = []byte(w.key()), []byte{0}
	case n < 30: // an arbitrary range
		k, end := w.key(), w.key()
		r.Key, r.RangeEnd = []byte(min(k, end)), []byte(max(k, end))
	case n < 32: // end before key
		k, end := w.key(), w.key()
		r.Key, r.RangeEnd = []byte(max(k, end)), []byte(min(k, end))
	case n < 33: // end equal to key
		k := w.key()
		r.Key, r.RangeEnd = []byte(k), []byte(k)
	case n < 37: // the whole keyspace
		r.Key, r.RangeEnd = []byte{0}, []byte{0}
	case n < 38: // the key "\x00" alone
		r.Key = []byte{0}
	default: // no key: etcd's "key is not provided"
		if w.rng.IntN(2) == 0 {
			r.RangeEnd = []byte{0}
		}
	}
	r.Limit = []int64{0, 0, 0, 0, 1, 2, 3, 5, 1000, -1, -7, math.MaxInt64, math.MaxInt64 - 1}[w.rng.IntN(13)]
	r.Revision = w.revision()
	orders := []pb.RangeRequest_SortOrder{pb.RangeRequest_NONE, pb.RangeRequest_NONE, pb.RangeRequest_NONE,
		pb.RangeRequest_ASCEND, pb.RangeRequest_DESCEND}
	targets := []pb.RangeRequest_SortTarget{pb.RangeRequest_KEY, pb.RangeRequest_KEY, pb.RangeRequest_VERSION,
		pb.RangeRequest_CREATE, pb.RangeRequest_MOD, pb.RangeRequest_VALUE}
	r.SortOrder, r.SortTarget = orders[w.rng.IntN(len(orders))], targets[w.rng.IntN(len(targets))]
	if w.rng.IntN(40) == 0 {
		r.SortOrder = 7 // not a sort order
	}
	if w.rng.IntN(40) == 0 {
		r.SortTarget = 7 // not a sort target
	}
	r.Serializable = w.rng.IntN(2) == 0
	r.KeysOnly = w.rng.IntN(5) == 0
	r.CountOnly = w.rng.IntN(7) == 0
	filter := func() int64 {
		if w.rng.IntN(8) != 0 {
			return 0
		}
		if w.rng.IntN(10) == 0 {
			return -1
		}
		return 1 + w.rng.Int64N(w.cur+1)
	}
	r.MinModRevision, r.MaxModRevision = filter(), filter()
	r.MinCreateRevision, r.MaxCreateRevision = filter(), filter()
	return r
}

// compare sends r to etcd and to every gateway, requires the same outcome from each, and
// returns etcd's.
func (w *diffWorld) compare(ctx context.Context, r *pb.RangeRequest, where string) rangeOutcome {
	t := w.t
	t.Helper()
	want := doRange(ctx, w.etcd, r)
	if want.Resp != nil {
		w.outcomes["OK"]++
	} else {
		w.outcomes[want.Code.String()+": "+want.Msg]++
	}
	if want.Code == codes.DeadlineExceeded || want.Code == codes.Canceled || want.Code == codes.Unavailable {
		t.Fatalf("%s: etcd: %v %s", where, want.Code, want.Msg)
	}
	for _, g := range w.gws {
		got := doRange(ctx, g.kv, r)
		diff := gocmp.Diff(want, got, protocmp.Transform())
		if diff == "" {
			continue
		}
		if tiesOnly(r, want, got) {
			diff += "\n(only the order of kvs with equal sort values differs: etcd sorts with sort.Sort, which is not stable)"
		}
		t.Errorf("%s: %s differs from etcd (revision %d, compacted at %d)\nrequest: %v\n(-etcd +gateway):\n%s",
			where, g.name, w.cur, w.compact, r, diff)
		if w.bad++; w.bad >= 10 {
			t.Fatalf("too many differences")
		}
	}
	return want
}

// tiesOnly reports whether want and got are the same once the kvs of equal sort value are
// ordered by key.
func tiesOnly(r *pb.RangeRequest, want, got rangeOutcome) bool {
	if want.Resp == nil || got.Resp == nil || len(want.Resp.Kvs) != len(got.Resp.Kvs) {
		return false
	}
	canon := func(o rangeOutcome) *pb.RangeResponse {
		resp := proto.Clone(o.Resp).(*pb.RangeResponse)
		slices.SortStableFunc(resp.Kvs, func(a, b *mvccpb.KeyValue) int {
			var c int
			switch r.SortTarget {
			case pb.RangeRequest_VERSION:
				c = cmp.Compare(a.Version, b.Version)
			case pb.RangeRequest_CREATE:
				c = cmp.Compare(a.CreateRevision, b.CreateRevision)
			case pb.RangeRequest_MOD:
				c = cmp.Compare(a.ModRevision, b.ModRevision)
			case pb.RangeRequest_VALUE:
				c = bytes.Compare(a.Value, b.Value)
			}
			if r.SortOrder == pb.RangeRequest_DESCEND {
				c = -c
			}
			return cmp.Or(c, bytes.Compare(a.Key, b.Key))
		})
		return resp
	}
	return gocmp.Equal(canon(want), canon(got), protocmp.Transform())
}

// paginate lists a random range as Kubernetes does: the first page at the current revision,
// every next page pinned to the first page's revision from the last key + "\x00", while more
// is set, with writes between the pages that make the pinned revision historical (past the
// short replica's history, sometimes). Every page is compared with etcd's, and the remaining
// count Kubernetes derives from each page (count - len(kvs)) must be what the next pages hold.
func (w *diffWorld) paginate(ctx context.Context, where string) {
	t := w.t
	t.Helper()
	r := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 1 + w.rng.Int64N(4)}
	if w.rng.IntN(3) != 0 {
		pre := diffListPrefixes[w.rng.IntN(3)]
		r.Key, r.RangeEnd = []byte(pre), []byte(clientv3.GetPrefixRangeEnd(pre))
	}
	var pages []*pb.RangeResponse
	for i := 0; ; i++ {
		if i > 100 {
			t.Fatalf("%s: more than 100 pages", where)
		}
		if i > 0 && w.rng.IntN(2) == 0 {
			for range 1 + w.rng.IntN(8) {
				w.write(ctx)
			}
			w.sync(ctx)
		}
		bad := w.bad
		out := w.compare(ctx, r, fmt.Sprintf("%s page %d", where, i))
		if out.Resp == nil {
			t.Fatalf("%s page %d: %v %s\nrequest: %v", where, i, out.Code, out.Msg, r)
		}
		if w.bad != bad {
			return // reported; the pages that would follow are not comparable
		}
		resp := out.Resp
		pages = append(pages, resp)
		if resp.More && len(resp.Kvs) == 0 {
			t.Fatalf("%s page %d: more without kvs", where, i)
		}
		if !resp.More {
			break
		}
		if i == 0 {
			r.Revision = resp.Header.Revision
		}
		r = proto.Clone(r).(*pb.RangeRequest)
		r.Key = append(slices.Clone(resp.Kvs[len(resp.Kvs)-1].Key), 0)
	}
	after := 0
	for i := len(pages) - 1; i >= 0; i-- {
		if remaining := pages[i].Count - int64(len(pages[i].Kvs)); remaining != int64(after) {
			t.Errorf("%s page %d: count %d - %d kvs = %d remaining, but the next pages held %d",
				where, i, pages[i].Count, len(pages[i].Kvs), remaining, after)
		}
		after += len(pages[i].Kvs)
	}
}
