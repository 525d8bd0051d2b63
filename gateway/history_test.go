package gateway_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/internal/stack"
	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// watchSpec is a watcher's options, drawn at random by the history checker.
type watchSpec struct {
	key, end          string // end "": the key alone; "\x00": from key
	start             int64  // 0: from now
	prevKV            bool
	noPut, noDelete   bool
	slow, progress    bool
	cancelAfterEvents int // > 0: the client cancels after this many events
}

func (s watchSpec) String() string {
	return fmt.Sprintf("key=%q end=%q start=%d prevKV=%v noPut=%v noDelete=%v slow=%v progress=%v cancelAfter=%d",
		s.key, s.end, s.start, s.prevKV, s.noPut, s.noDelete, s.slow, s.progress, s.cancelAfterEvents)
}

func (s watchSpec) options() []clientv3.OpOption {
	opts := []clientv3.OpOption{clientv3.WithRev(s.start), clientv3.WithCreatedNotify()}
	switch s.end {
	case "":
	case "\x00":
		opts = append(opts, clientv3.WithFromKey())
	default:
		opts = append(opts, clientv3.WithRange(s.end))
	}
	if s.prevKV {
		opts = append(opts, clientv3.WithPrevKV())
	}
	if s.noPut {
		opts = append(opts, clientv3.WithFilterPut())
	}
	if s.noDelete {
		opts = append(opts, clientv3.WithFilterDelete())
	}
	return opts
}

// selects is the reference filter: what etcd sends this watcher of event ev.
func (s watchSpec) selects(ev *mvccpb.Event) bool {
	k := string(ev.Kv.Key)
	switch {
	case s.end == "" && k != s.key:
		return false
	case s.end == "\x00" && k < s.key:
		return false
	case s.end != "" && s.end != "\x00" && (k < s.key || k >= s.end):
		return false
	}
	if ev.Type == mvccpb.PUT {
		return !s.noPut
	}
	return !s.noDelete
}

func randomSpec(rng *rand.Rand, first, now int64) watchSpec {
	var s watchSpec
	switch rng.IntN(4) {
	case 0:
		s.key = fmt.Sprintf("h/%02d", rng.IntN(40))
	case 1:
		d := rng.IntN(4)
		s.key, s.end = fmt.Sprintf("h/%d", d), fmt.Sprintf("h/%d", d+1)
	case 2:
		s.key, s.end = fmt.Sprintf("h/%02d", rng.IntN(40)), "\x00"
	default:
		s.key, s.end = "h/", "h0"
	}
	if rng.IntN(2) == 0 && now >= first {
		s.start = first + rng.Int64N(now-first+1)
	}
	s.prevKV = rng.IntN(2) == 0
	switch rng.IntN(6) {
	case 0:
		s.noPut = true
	case 1:
		s.noDelete = true
	}
	// A slow reader leaves clientv3 holding its responses: clientv3 then stalls the whole
	// stream (its created notification blocks its stream's dispatch) and, from etcd as from
	// the gateway, a from-now watcher's first events are not those after its Created
	// revision. So a slow reader gets a stream of its own and an explicit start revision.
	s.slow = rng.IntN(4) == 0
	if s.slow && s.start == 0 {
		s.start = now
	}
	s.progress = rng.IntN(3) == 0
	if rng.IntN(5) == 0 {
		s.cancelAfterEvents = 1 + rng.IntN(30)
	}
	return s
}

// watchRecord is what one watcher received.
type watchRecord struct {
	spec watchSpec

	mu        sync.Mutex
	created   int64 // the Created response's header revision
	responses []clientv3.WatchResponse
	events    int
	stopped   bool // canceled by the client, or failed
	err       error
	compacted int64 // the compact revision of a watch canceled as compacted
}

func (r *watchRecord) add(resp clientv3.WatchResponse) (events int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if resp.Created {
		r.created = resp.Header.Revision
		return r.events
	}
	r.responses = append(r.responses, resp)
	r.events += len(resp.Events)
	return r.events
}

// TestHistoryChecker runs randomized concurrent traffic (puts, deletes, range deletes, multi-key
// txns, leases revoked with keys attached, compactions) while watchers with random options are created
// through the gateway at random moments, from now or from random past revisions. Some read
// nothing until the traffic is over (so their streams overflow and they are caught up from the
// history ring and the log), some are canceled part way, some streams ask for progress. The
// gateway's send buffers and history ring are tiny so every path is taken.
//
// etcd's own history is the reference. Every watcher's history must be ordered, unique and
// reliable (exactly the expected events in order, none missing; a canceled watcher a prefix of
// them; a watch from before a compaction may instead be canceled with that compact revision, as
// etcd would), with correct prev_kv, create_revision and version (events are compared whole), atomic
// (no revision split across responses) and bookmarkable (after a progress notification at R,
// no event at or below R).
func TestHistoryChecker(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	ctx := testenv.Context(t, 3*time.Minute)
	st := stacktest.Start(t, func(o *stack.Options) {
		o.Gateway.WatchSendBuffer = 4
		o.Gateway.WatchSendBytes = 4 << 10
		o.Gateway.HistoryRevisions = 64
	})
	direct := testenv.Client(t, st.Etcd.Endpoint)
	const streams = 4
	endpoint := st.ClientURL
	var clients []*clientv3.Client
	for range streams {
		clients = append(clients, testenv.Client(t, endpoint))
	}
	first := testenv.Rev(ctx, t, direct) + 1
	// The reference: etcd's own history, read by a watch opened before the traffic (a watch
	// that keeps up is not affected by compaction, unlike a read of the history afterwards).
	refCh := direct.Watch(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(first), clientv3.WithPrevKV())
	// Compactions during the traffic, as etcd's own compactor makes them. compactions holds
	// every compact revision, in order.
	var compactMu sync.Mutex
	compactions := []int64{}

	// The traffic, from three writers.
	const ops = 1500
	ops0 := make([]clientv3.Op, ops)
	for i := range ops0 {
		k := func() string { return fmt.Sprintf("h/%02d", rng.IntN(40)) }
		switch n := rng.IntN(10); {
		case n < 5:
			ops0[i] = clientv3.OpPut(k(), fmt.Sprintf("v%d", rng.IntN(1000)))
		case n < 7:
			ops0[i] = clientv3.OpDelete(k())
		case n < 8:
			ops0[i] = clientv3.OpDelete(fmt.Sprintf("h/%d", rng.IntN(4)), clientv3.WithPrefix())
		default:
			p := rng.Perm(40) // a txn may not touch one key twice
			ks := func(j int) string { return fmt.Sprintf("h/%02d", p[j]) }
			ops0[i] = clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut(ks(0), "t1"), clientv3.OpDelete(ks(1)), clientv3.OpPut(ks(2), "t2")}, nil)
		}
	}
	trafficDone := make(chan struct{})
	var writers sync.WaitGroup
	for w := range 3 {
		writers.Go(func() {
			for i := w; i < ops; i += 3 {
				if w == 0 && i%300 == 0 && i > 0 { // compact 40 revisions back, through the gateway as Kubernetes does
					now := testenv.Rev(ctx, t, direct)
					compactMu.Lock()
					if _, err := clients[0].Compact(ctx, now-40); err == nil {
						compactions = append(compactions, now-40)
					}
					compactMu.Unlock()
				}
				if i%300 == 0 { // a revoked lease deletes its keys in one revision
					l, err := direct.Grant(ctx, 60)
					if err != nil {
						t.Error(err)
						return
					}
					for _, k := range []string{"h/00", "h/39"} {
						if _, err := direct.Put(ctx, k, "leased", clientv3.WithLease(l.ID)); err != nil {
							t.Error(err)
							return
						}
					}
					if _, err := direct.Revoke(ctx, l.ID); err != nil {
						t.Error(err)
						return
					}
				}
				if _, err := direct.Do(ctx, ops0[i]); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	go func() { writers.Wait(); close(trafficDone) }()

	// The watchers, created while the traffic runs.
	var records []*watchRecord
	var readers sync.WaitGroup
	stop := make(chan struct{})
	for i := range 60 {
		now := testenv.Rev(ctx, t, direct)
		rec := &watchRecord{spec: randomSpec(rng, first, now)}
		records = append(records, rec)
		c := clients[i%streams]
		if rec.spec.slow {
			c = testenv.Client(t, endpoint)
		}
		wctx, cancel := context.WithCancel(ctx)
		wch := c.Watch(wctx, rec.spec.key, rec.spec.options()...)
		readers.Go(func() {
			defer cancel()
			if rec.spec.slow {
				<-trafficDone
			}
			for {
				select {
				case resp, ok := <-wch:
					if !ok {
						return
					}
					if err := resp.Err(); err != nil {
						rec.mu.Lock()
						rec.err, rec.stopped, rec.compacted = err, true, resp.CompactRevision
						rec.mu.Unlock()
						return
					}
					n := rec.add(resp)
					if rec.spec.progress && len(resp.Events) > 0 {
						_ = c.RequestProgress(wctx)
					}
					if k := rec.spec.cancelAfterEvents; k > 0 && n >= k {
						rec.mu.Lock()
						rec.stopped = true
						rec.mu.Unlock()
						return
					}
				case <-stop:
					return
				}
			}
		})
		select { // spread the creations over the traffic
		case <-trafficDone:
		default:
			for range rng.IntN(3) {
				if _, err := direct.Put(ctx, "h/pace", "p"); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	<-trafficDone
	last := testenv.Rev(ctx, t, direct)
	var history [][]*mvccpb.Event
	for n := len(history); n == 0 || history[n-1][0].Kv.ModRevision < last; n = len(history) {
		resp := <-refCh
		if err := resp.Err(); err != nil {
			t.Fatalf("reference watch: %v", err)
		}
		for _, ev := range resp.Events {
			if k := len(history); k > 0 && history[k-1][0].Kv.ModRevision == ev.Kv.ModRevision {
				history[k-1] = append(history[k-1], ev)
			} else {
				history = append(history, []*mvccpb.Event{ev})
			}
		}
	}

	// Wait until every watcher has what it should (or has stopped), then compare.
	want := make([][]*mvccpb.Event, len(records))
	for i, rec := range records {
		rec.mu.Lock()
		from := rec.spec.start
		if from == 0 {
			from = rec.created + 1
		}
		rec.mu.Unlock()
		for _, revEvents := range history {
			for _, ev := range revEvents {
				if ev.Kv.ModRevision >= from && rec.spec.selects(ev) {
					e := ev
					if !rec.spec.prevKV || ev.Kv.ModRevision == rec.spec.start && slices.Contains(compactions, rec.spec.start) {
						// etcd reads prev_kv at the revision before, which a compaction at the
						// start revision has removed.
						e = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
					}
					want[i] = append(want[i], e)
				}
			}
		}
	}
	deadline := time.NewTimer(time.Minute)
	defer deadline.Stop()
	for i, rec := range records {
		for {
			rec.mu.Lock()
			done := rec.stopped || rec.events >= len(want[i])
			rec.mu.Unlock()
			if done {
				break
			}
			select {
			case <-deadline.C:
				rec.mu.Lock()
				var got []*mvccpb.Event
				for _, resp := range rec.responses {
					got = append(got, resp.Events...)
				}
				for j := range got {
					if j >= len(want[i]) || got[j].Kv.ModRevision != want[i][j].Kv.ModRevision {
						t.Errorf("watcher %d: event %d is at revision %d, want %v", i, j, got[j].Kv.ModRevision, want[i][j].Kv.ModRevision)
						break
					}
				}
				if n := len(got); n > 0 {
					t.Errorf("watcher %d: last event at %d; wanted up to %d; %d responses", i, got[n-1].Kv.ModRevision, want[i][len(want[i])-1].Kv.ModRevision, len(rec.responses))
				}
				t.Fatalf("watcher %d (%s) has %d of %d events", i, rec.spec, rec.events, len(want[i]))
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	close(stop)
	readers.Wait()

	compacted := 0
	for i, rec := range records {
		checkRecord(t, i, rec, want[i], compactions)
		if rec.compacted != 0 {
			compacted++
		}
	}
	t.Logf("%d revisions, compactions at %v, %d of %d watchers compacted", len(history), compactions, compacted, len(records))
}

// checkRecord compares what one watcher received with what etcd's history says it should have.
func checkRecord(t *testing.T, i int, rec *watchRecord, want []*mvccpb.Event, compactions []int64) {
	t.Helper()
	name := fmt.Sprintf("watcher %d (%s)", i, rec.spec)
	if rec.compacted != 0 {
		// Compacted as etcd would: the start revision is below a compaction that had happened.
		if rec.spec.start == 0 || rec.spec.start >= rec.compacted || !slices.Contains(compactions, rec.compacted) {
			t.Errorf("%s: compacted at %d, not a compaction this start revision is below (%v)", name, rec.compacted, compactions)
		}
		return
	}
	if rec.err != nil {
		t.Errorf("%s: failed: %v", name, rec.err)
		return
	}
	var got []*mvccpb.Event
	seen := map[int64]bool{}
	progress := int64(0)
	for _, resp := range rec.responses {
		if resp.IsProgressNotify() {
			progress = max(progress, resp.Header.Revision)
			continue
		}
		revs := map[int64]bool{}
		for _, ev := range resp.Events {
			r := ev.Kv.ModRevision
			if r <= progress {
				t.Errorf("%s: event at revision %d after a progress notification at %d", name, r, progress)
			}
			if seen[r] && !revs[r] {
				t.Errorf("%s: revision %d split across responses", name, r)
			}
			revs[r], seen[r] = true, true
		}
		got = append(got, resp.Events...)
	}
	if rec.stopped {
		if len(got) > len(want) {
			got = got[:len(want)]
		}
		want = want[:min(len(want), len(got))]
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("%s: history differs from etcd's (-etcd +gateway):\n%s", name, firstLines(diff, 40))
	}
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines[n] = "..."
	}
	return strings.Join(lines, "\n")
}
