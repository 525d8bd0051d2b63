package gateway_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/internal/faults"
	"github.com/watchgate/watchgate/internal/testenv"
)

// TestEventLogNodeLoss runs writers and watchers through two gateway replicas whose event log
// is an R3 stream on a 3-node JetStream cluster, and takes the cluster's nodes away under load:
//
//   - one node, the stream leader's: the stream keeps its quorum, so after at most a leader
//     election ingest goes on publishing and watchers go on receiving;
//   - a second node: the stream has no quorum. Ingest gets no acknowledgement and the log does
//     not move, while the gateways keep their watches open, answer serializable reads from their
//     cache, answer linearizable reads from etcd once CacheWait has passed, and pass writes
//     through to etcd;
//   - both nodes come back: ingest publishes the backlog and the gateways' consumers resume.
//
// Afterwards every watcher's history, and the log itself, must be exactly etcd's: nothing lost,
// duplicated or reordered, each revision in one response, no watch canceled. The test logs what
// clients saw in each phase: writes that succeeded, the longest wait between two successful
// writes of one writer, how long revisions took from their write to a watcher, and the longest
// time a whole-keyspace watcher received nothing.
func TestEventLogNodeLoss(t *testing.T) {
	ctx := testenv.Context(t, 90*time.Second)
	nodes := testenv.NATSCluster(t, 3)
	e := testenv.Etcd(t)
	p := &parts{member: testenv.Client(t, e.Endpoint), natsURL: nodes.ClientURL()}
	_, p.js = testenv.JetStream(t, p.natsURL)
	logCfg := eventlog.Config{Replicas: 3}
	var err error
	if p.log, err = eventlog.Ensure(ctx, p.js, logCfg); err != nil {
		t.Fatal(err)
	}
	stream := p.log.Stream()

	ing, _ := p.runIngest(t, ctx)
	var srvs []*gateway.Server
	var gws []*clientv3.Client
	for range 2 {
		srv, gw := p.runGateway(t, ctx, func(o *gateway.Options) {
			// Each replica has a connection of its own to the cluster, as separate processes do.
			_, o.JetStream = testenv.JetStream(t, p.natsURL)
		})
		srvs, gws = append(srvs, srv), append(gws, gw)
	}

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case <-ctx.Done():
				t.Fatalf("timed out waiting until %s", what)
			case <-time.After(10 * time.Millisecond): // polling a condition
			}
		}
	}
	applied := func(rev int64) bool {
		for _, s := range srvs {
			if s.Applied() < rev {
				return false
			}
		}
		return true
	}
	caughtUp := func(rev int64) func() bool {
		return func() bool { return ing.Published() >= rev && applied(rev) }
	}
	waitFor("the replicas are ready", func() bool { return srvs[0].Ready() && srvs[1].Ready() })

	l := faults.NewLoad("steady")
	watchCtx, stopWatchers := context.WithCancel(ctx)
	defer func() { stopWatchers(); l.WaitWatchers() }()
	watch := func(gw *clientv3.Client, spec faults.Watch) {
		t.Helper()
		if _, err := l.Watch(watchCtx, gw, spec); err != nil {
			t.Fatal(err)
		}
	}
	for i, spec := range []faults.Watch{
		{Name: "A: every key from 1", Key: "\x00", End: "\x00", Start: 1, PrevKV: true},
		{Name: "B: every key from now", Key: "\x00", End: "\x00"},
		{Name: "A: writer 0", Key: "k/0/", End: "k/00"},
		{Name: "B: writer 1 with prev_kv", Key: "k/1/", End: "k/10", PrevKV: true},
		{Name: "A: one key", Key: "k/2/07"},
	} {
		watch(gws[i%2], spec)
	}
	const writers = 3
	writeCtx, stopWriters := context.WithCancel(ctx)
	for n := range writers {
		l.Write(writeCtx, gws[n%2], n, 10*time.Millisecond)
	}
	defer func() { stopWriters(); l.WaitWriters() }()
	steadily := func(writes int) {
		t.Helper()
		waitFor(fmt.Sprintf("%d writes succeed", writes), func() bool { return l.WritesInPhase() >= writes })
		rev := testenv.Rev(ctx, t, p.member)
		waitFor(fmt.Sprintf("the log and the replicas reach revision %d", rev), caughtUp(rev))
	}
	steadily(100)

	// (a) The stream leader's node goes: the stream elects another leader among the two left.
	leader := testenv.StreamLeader(ctx, t, nodes, p.js, stream)
	l.Begin("1 node down")
	killed := time.Now()
	nodes.Shutdown(leader)
	at := testenv.Rev(ctx, t, p.member)
	waitFor(fmt.Sprintf("ingest publishes revision %d", at), func() bool { return ing.Published() >= at })
	oneNodeResume := time.Since(killed)
	waitFor(fmt.Sprintf("the replicas apply revision %d", at), func() bool { return applied(at) })
	oneNodeApplied := time.Since(killed)
	next := testenv.StreamLeader(ctx, t, nodes, p.js, stream)
	t.Logf("node %s (stream leader) down: the log reached revision %d after %v, the replicas after %v; new leader %s",
		nodes.Name(leader), at, oneNodeResume.Round(time.Millisecond), oneNodeApplied.Round(time.Millisecond), nodes.Name(next))
	steadily(150)

	// (b) A second node goes: the stream has no quorum.
	l.Begin("2 nodes down")
	nodes.Shutdown(next)
	lost := testenv.Rev(ctx, t, p.member)
	survivor := 3 - leader - next
	waitFor("writes through the replicas go on succeeding", func() bool { return l.WritesInPhase() >= 50 })
	stuck := ing.Published()
	if stuck > lost {
		t.Errorf("ingest acknowledged revision %d, beyond etcd's revision %d when the quorum was lost", stuck, lost)
	}
	// A watch created now starts after etcd's current revision and must get what follows
	// once the log moves again.
	for i, gw := range gws {
		watch(gw, faults.Watch{Name: fmt.Sprintf("%c: every key, created without a quorum", 'A'+i), Key: "\x00", End: "\x00"})
	}
	checkReadsWithoutQuorum(ctx, t, p, srvs, gws)
	waitFor("200 writes succeed without a quorum", func() bool { return l.WritesInPhase() >= 200 })
	if got := ing.Published(); got != stuck {
		t.Errorf("without a quorum ingest's acknowledged revision moved from %d to %d", stuck, got)
	}
	if got := localLast(t, nodes.Node(survivor), stream); got > lost {
		t.Errorf("the surviving node's copy of the log holds revision %d, beyond etcd's %d at the quorum loss", got, lost)
	}
	for _, w := range l.Watchers() {
		if r, ok := w.Ended(); ok {
			t.Errorf("watch %s ended without a quorum: %+v", w.Recorded().Name, r)
		}
	}
	behind := testenv.Rev(ctx, t, p.member)
	t.Logf("no quorum: etcd moved from revision %d to %d; the log stayed at %d; replicas applied %d and %d",
		lost, behind, stuck, srvs[0].Applied(), srvs[1].Applied())

	// (c) Both nodes come back: ingest publishes the backlog, the consumers resume.
	l.Begin("restored")
	restart := time.Now()
	var restarting sync.WaitGroup
	for _, i := range []int{leader, next} {
		restarting.Go(func() {
			if err := nodes.Restart(i); err != nil {
				t.Error(err)
			}
		})
	}
	restarting.Wait()
	at = testenv.Rev(ctx, t, p.member)
	waitFor(fmt.Sprintf("ingest publishes revision %d", at), func() bool { return ing.Published() >= at })
	ingestResume := time.Since(restart)
	waitFor(fmt.Sprintf("the replicas apply revision %d", at), func() bool { return applied(at) })
	t.Logf("nodes restarted: the log reached revision %d (%d behind at the restart) after %v, the replicas after %v",
		at, at-stuck, ingestResume.Round(time.Millisecond), time.Since(restart).Round(time.Millisecond))
	steadily(150)

	stopWriters()
	l.WaitWriters()
	l.End()
	last := testenv.Rev(ctx, t, p.member)
	waitFor(fmt.Sprintf("the log and the replicas reach revision %d", last), caughtUp(last))
	waitFor(fmt.Sprintf("every watcher hears of revision %d", last), func() bool {
		for _, gw := range gws {
			_ = gw.RequestProgress(ctx)
		}
		return l.Progress() >= last
	})
	for _, line := range l.Report() {
		t.Log(line)
	}

	h := faults.History{From: eventlog.FirstRevision, Revisions: testenv.History(ctx, t, p.member, eventlog.FirstRevision, last)}
	var bad []faults.Violation
	for _, w := range l.Watchers() {
		bad = append(bad, faults.CheckWatch(h, w.Recorded(), last)...)
	}
	bad = append(bad, checkLogHistory(ctx, t, p.log, h)...)
	for _, v := range bad {
		t.Error(v)
	}
	t.Logf("%d revisions, %d watchers and the log checked against etcd's history", len(h.Revisions), len(l.Watchers()))
}

// checkReadsWithoutQuorum checks what reads through each replica do while the log stands
// still: a serializable Range is answered from the cache at once, at the revision the cache
// holds, exactly as etcd had it then; a linearizable Range waits CacheWait for the cache to
// reach etcd's revision, then is answered by etcd.
func checkReadsWithoutQuorum(ctx context.Context, t *testing.T, p *parts, srvs []*gateway.Server, gws []*clientv3.Client) {
	t.Helper()
	var wg sync.WaitGroup
	for i, gw := range gws {
		srv := srvs[i]
		before := srv.ReadStats()
		r, err := gw.Get(ctx, "k/0/", clientv3.WithPrefix(), clientv3.WithSerializable())
		if err != nil {
			t.Errorf("replica %d: serializable range: %v", i, err)
			continue
		}
		if got := srv.ReadStats().Cached - before.Cached; got != 1 {
			t.Errorf("replica %d: serializable range not answered from the cache", i)
		}
		want, err := p.member.Get(ctx, "k/0/", clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision))
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range faults.CheckKeyspace(fmt.Sprintf("replica %d serializable", i), want.Kvs, r.Kvs) {
			t.Error(v)
		}
		wg.Go(func() {
			floor := testenv.Rev(ctx, t, p.member)
			start := time.Now()
			r, err := gw.Get(ctx, "k/0/", clientv3.WithPrefix())
			took := time.Since(start)
			switch {
			case err != nil:
				t.Errorf("replica %d: linearizable range: %v", i, err)
			case r.Header.Revision < floor:
				t.Errorf("replica %d: linearizable range at revision %d, etcd was at %d before it", i, r.Header.Revision, floor)
			case srv.ReadStats().FellBack == before.FellBack:
				t.Errorf("replica %d: linearizable range answered from a cache that cannot be current", i)
			}
			t.Logf("replica %d without a quorum: serializable range at revision %d (cache); linearizable range at %d after %v (etcd)",
				i, r.Header.Revision, r.Header.Revision, took.Round(time.Millisecond))
		})
	}
	wg.Wait()
}

// localLast is the last sequence of stream in ns's own copy, read without asking the cluster.
func localLast(t *testing.T, ns *server.Server, stream string) int64 {
	t.Helper()
	jsz, err := ns.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range jsz.AccountDetails {
		for _, s := range a.Streams {
			if s.Name == stream {
				return int64(s.State.LastSeq)
			}
		}
	}
	t.Fatalf("node %s holds no copy of %s", ns.Name(), stream)
	return 0
}

// checkLogHistory compares the log's revisions with etcd's history.
func checkLogHistory(ctx context.Context, t *testing.T, log *eventlog.Log, h faults.History) []faults.Violation {
	t.Helper()
	b, err := log.Bounds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b.Last != h.Last() {
		t.Errorf("the log ends at revision %d, etcd's history at %d", b.Last, h.Last())
	}
	cur, err := log.Follow(ctx, h.From, 0)
	for err != nil { // the cluster may still be electing its meta leader after the restarts
		select {
		case <-ctx.Done():
			t.Fatal(err)
		case <-time.After(50 * time.Millisecond): // polling an election
		}
		cur, err = log.Follow(ctx, h.From, 0)
	}
	defer cur.Close()
	w := faults.Watch{Name: "event log", Key: "\x00", End: "\x00", Start: h.From, PrevKV: true}
	for rev := h.From; rev <= h.Last(); rev++ {
		e, err := cur.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		w.Responses = append(w.Responses, faults.Response{Events: e.Events, Err: e.Err})
	}
	return faults.CheckWatch(h, w, h.Last())
}
