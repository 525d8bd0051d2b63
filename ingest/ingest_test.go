package ingest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/internal/testenv"
)

type env struct {
	etcd    *clientv3.Client
	js      jetstream.JetStream
	log     *eventlog.Log
	natsURL string
	// endpoint is etcd's client URL, for workers that need clients of their own.
	endpoint string
}

func newEnv(t testing.TB, ctx context.Context) *env {
	e := testenv.Etcd(t)
	ns := testenv.NATS(t)
	_, js := testenv.JetStream(t, ns.ClientURL())
	return &env{etcd: testenv.Client(t, e.Endpoint), js: js, log: testenv.EventLog(ctx, t, js),
		natsURL: ns.ClientURL(), endpoint: e.Endpoint}
}

// start runs an ingester until the returned stop is called.
func start(t testing.TB, ctx context.Context, o Options) (*Ingester, func()) {
	t.Helper()
	ing, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := ing.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return ing, func() { cancel(); wg.Wait() }
}

// waitPublished waits until the log's last revision reaches rev.
func waitPublished(t testing.TB, ctx context.Context, l *eventlog.Log, rev int64) {
	t.Helper()
	for {
		b, err := l.Bounds(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if b.Last >= rev {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("log reached %d, want %d", b.Last, rev)
		case <-time.After(10 * time.Millisecond): // polling a real server, not timing logic
		}
	}
}

// logMatchesEtcd waits until the log holds etcd's current revision and checks that it is
// identical to etcd's history. It returns that revision.
func logMatchesEtcd(t testing.TB, ctx context.Context, env *env) int64 {
	t.Helper()
	last := testenv.Rev(ctx, t, env.etcd)
	waitPublished(t, ctx, env.log, last)
	want := testenv.History(ctx, t, env.etcd, eventlog.FirstRevision, last)
	got := readLog(t, ctx, env.log, eventlog.FirstRevision, last)
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Fatalf("log differs from etcd history (-want +got):\n%s", diff)
	}
	return last
}

// readLog reads revisions [from, to] from the log.
func readLog(t testing.TB, ctx context.Context, l *eventlog.Log, from, to int64) [][]*mvccpb.Event {
	t.Helper()
	cur, err := l.Follow(ctx, from, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	var out [][]*mvccpb.Event
	for next := from; next <= to; next++ {
		e, err := cur.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if e.Err != nil || e.Missing != 0 || e.Rev != next {
			t.Fatalf("log entry %d: rev %d missing %d err %v", next, e.Rev, e.Missing, e.Err)
		}
		out = append(out, e.Events)
	}
	return out
}

func TestIngestMatchesEtcdHistory(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	env := newEnv(t, ctx)
	_, stop := start(t, ctx, Options{Member: env.etcd, Log: env.log})
	defer stop()

	c := env.etcd
	for i := range 20 {
		if _, err := c.Put(ctx, fmt.Sprintf("k/%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	// A multi-key txn is one revision with several events.
	if _, err := c.Txn(ctx).Then(clientv3.OpPut("k/00", "x"), clientv3.OpPut("k/01", "y"),
		clientv3.OpDelete("k/02")).Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, "k/1", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	// Lease revocation deletes its keys in one revision.
	lease, err := c.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := c.Put(ctx, fmt.Sprintf("l/%d", i), "v", clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	last := testenv.Rev(ctx, t, c)
	waitPublished(t, ctx, env.log, last)

	want := testenv.History(ctx, t, c, eventlog.FirstRevision, last)
	got := readLog(t, ctx, env.log, eventlog.FirstRevision, last)
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Fatalf("log differs from etcd history (-want +got):\n%s", diff)
	}
}

// TestIngestKilledMidBurst kills ingest (its NATS connection drops with publishes in flight)
// during a burst of 10,000 revisions, starts a new one, and checks the log holds every revision
// exactly once, identical to etcd's history.
func TestIngestKilledMidBurst(t *testing.T) {
	const revisions = 10000
	ctx := testenv.Context(t, 3*time.Minute)
	env := newEnv(t, ctx)

	// The first ingester has its own connection, so it can be killed abruptly.
	nc1, js1 := testenv.JetStream(t, env.natsURL)
	ing1, stop1 := start(t, ctx, Options{Member: env.etcd, Log: testenv.EventLog(ctx, t, js1)})

	writes := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < revisions && err == nil; i++ {
			_, err = env.etcd.Put(ctx, fmt.Sprintf("burst/%d", i%100), fmt.Sprint(i))
		}
		writes <- err
	}()
	// Kill once ingest is a few thousand revisions in.
	for ing1.Published() < 3000 {
		select {
		case err := <-writes:
			t.Fatalf("writes finished before the kill: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	nc1.Close()
	stop1()
	killedAt := ing1.Published()

	_, stop2 := start(t, ctx, Options{Member: env.etcd, Log: env.log})
	defer stop2()
	if err := <-writes; err != nil {
		t.Fatal(err)
	}
	last := testenv.Rev(ctx, t, env.etcd)
	if last < revisions {
		t.Fatalf("etcd at %d after %d writes", last, revisions)
	}
	waitPublished(t, ctx, env.log, last)
	t.Logf("killed at revision %d of %d", killedAt, last)

	want := testenv.History(ctx, t, env.etcd, eventlog.FirstRevision, last)
	got := readLog(t, ctx, env.log, eventlog.FirstRevision, last)
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Fatalf("log differs from etcd history (-want +got):\n%s", diff)
	}
}

// TestIngestCompactionJump stops ingest, lets the member compact past the log's end, and checks
// that the restarted ingest records the missing revisions as compacted instead of skipping them
// silently, then carries on with the revisions after the compaction.
func TestIngestCompactionJump(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	env := newEnv(t, ctx)
	c := env.etcd

	_, stop := start(t, ctx, Options{Member: env.etcd, Log: env.log})
	put := func(k string) int64 {
		r, err := c.Put(ctx, k, "v")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	put("a")
	waitPublished(t, ctx, env.log, put("b"))
	stop()

	put("c")
	compactAt := put("d")
	if _, err := c.Compact(ctx, compactAt); err != nil {
		t.Fatal(err)
	}
	after := put("e")

	ing, stop := start(t, ctx, Options{Member: env.etcd, Log: env.log})
	defer stop()
	waitPublished(t, ctx, env.log, after)
	b, err := env.log.Bounds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(eventlog.Bounds{First: compactAt + 1, Last: after}, b); diff != "" {
		t.Fatalf("bounds after jump (-want +got):\n%s", diff)
	}
	if b.Compact() != compactAt {
		t.Fatalf("log compact revision %d, want %d", b.Compact(), compactAt)
	}
	got := readLog(t, ctx, env.log, compactAt+1, after)
	if k := string(got[0][0].Kv.Key); k != "e" {
		t.Fatalf("first revision after the jump holds %q, want e", k)
	}
	if ing.Published() != after {
		t.Fatalf("Published() = %d, want %d", ing.Published(), after)
	}
}

// TestIngestLeaseExpiry lets a lease expire (not revoked) and checks the deletes etcd makes for
// its keys reach the log, in one revision, like any other write.
func TestIngestLeaseExpiry(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	env := newEnv(t, ctx)
	_, stop := start(t, ctx, Options{Member: env.etcd, Log: env.log})
	defer stop()
	c := env.etcd
	lease, err := c.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"exp/a", "exp/b"} {
		if _, err := c.Put(ctx, k, "v", clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	// Wait for etcd to expire the lease (polling the real server, bounded by ctx).
	for {
		r, err := c.Get(ctx, "exp/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if r.Count == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("lease never expired")
		case <-time.After(50 * time.Millisecond):
		}
	}
	last := testenv.Rev(ctx, t, c)
	waitPublished(t, ctx, env.log, last)
	got := readLog(t, ctx, env.log, last, last)[0]
	if len(got) != 2 || got[0].Type != mvccpb.Event_DELETE || got[1].Type != mvccpb.Event_DELETE ||
		got[0].PrevKv == nil || got[0].PrevKv.Lease != int64(lease.ID) {
		t.Fatalf("expiry revision %d in the log: %v", last, got)
	}
	want := testenv.History(ctx, t, c, eventlog.FirstRevision, last)
	all := readLog(t, ctx, env.log, eventlog.FirstRevision, last)
	if diff := cmp.Diff(want, all, protocmp.Transform()); diff != "" {
		t.Fatalf("log differs from etcd history (-want +got):\n%s", diff)
	}
}

// TestIngestTwoWorkersConverge runs two ingest workers on the same log at once, each on its own
// connection, during a burst of writes: their publishes race for every revision, and the log
// must end identical to etcd's history, with no revision twice and none missing. (Message ids
// drop the loser's identical copies here; eventlog's TestFence covers what only the
// expected-sequence fence stops: a revision landing at the wrong sequence.)
func TestIngestTwoWorkersConverge(t *testing.T) {
	const revisions = 3000
	ctx := testenv.Context(t, 2*time.Minute)
	env := newEnv(t, ctx)
	var workers []*Ingester
	for range 2 {
		_, js := testenv.JetStream(t, env.natsURL)
		ing, stop := start(t, ctx, Options{Member: env.etcd, Log: testenv.EventLog(ctx, t, js),
			RetryDelay: 10 * time.Millisecond})
		defer stop()
		workers = append(workers, ing)
	}
	for i := range revisions {
		if _, err := env.etcd.Put(ctx, fmt.Sprintf("race/%d", i%100), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	last := logMatchesEtcd(t, ctx, env)
	b, err := env.log.Bounds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b.Last != last {
		t.Fatalf("log ends at %d, etcd at %d", b.Last, last)
	}
	t.Logf("workers' last acknowledged revisions: %d and %d of %d",
		workers[0].Published(), workers[1].Published(), last)
}
