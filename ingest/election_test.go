package ingest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchgate/watchgate/internal/testenv"
)

// worker is one ingest process of an election test: its own etcd client (which also holds its
// election session) and its own NATS connection, so that killing it cuts both at once, as a
// crash would, without revoking its lease.
type worker struct {
	name string
	ing  *Ingester
	etcd *clientv3.Client
	nc   *nats.Conn
	stop func()
}

// kill cuts the worker off like a crash: its connections close and its lease is left to
// expire. The returned wait waits for the worker's goroutines to end.
func (w *worker) kill() (wait func()) {
	w.nc.Close()
	// The connection goes first, as in a crash: closing the client alone ends the session's
	// keep-alive before the connection, and the worker's own revoke could still get through.
	w.etcd.ActiveConnection().Close()
	w.etcd.Close()
	done := make(chan struct{})
	go func() { w.stop(); close(done) }()
	return func() { <-done }
}

// startWorker starts an elected ingest worker named name.
func startWorker(t testing.TB, ctx context.Context, env *env, name string, ttl time.Duration) *worker {
	t.Helper()
	c := testenv.Client(t, env.endpoint)
	nc, js := testenv.JetStream(t, env.natsURL)
	ing, stop := start(t, ctx, Options{
		Member:     c,
		Log:        testenv.EventLog(ctx, t, js),
		RetryDelay: 10 * time.Millisecond,
		Election:   &Election{Client: c, TTL: ttl, Name: name, SyncInterval: 50 * time.Millisecond},
	})
	return &worker{name: name, ing: ing, etcd: c, nc: nc, stop: stop}
}

// activeOf waits until exactly one of ws is active and the log has moved past rev, and returns
// that worker.
func activeOf(t testing.TB, ctx context.Context, env *env, ws []*worker, rev int64) *worker {
	t.Helper()
	for {
		var act []*worker
		for _, w := range ws {
			if w.ing.Active() {
				act = append(act, w)
			}
		}
		if len(act) > 1 {
			// Two may overlap only while the deposed one has not yet seen its session end;
			// both then publish the same revisions, which the log's fences reconcile.
			t.Logf("%d workers active at once (a deposed one has not noticed yet)", len(act))
		}
		if len(act) == 1 {
			b, err := env.log.Bounds(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if b.Last > rev {
				return act[0]
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no single active worker published past %d", rev)
		case <-time.After(5 * time.Millisecond): // polling real servers, not timing logic
		}
	}
}

// waitCandidates waits until the election has n candidates.
func waitCandidates(t testing.TB, ctx context.Context, env *env, n int) {
	t.Helper()
	for {
		cs, err := Candidates(ctx, env.etcd, "/watchgate/ingest/"+env.log.Stream())
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) == n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("election has %d candidates, want %d", len(cs), n)
		case <-time.After(5 * time.Millisecond): // polling a real server, not timing logic
		}
	}
}

// writeUntil writes to etcd, a few hundred revisions a second, until stop is closed, and
// reports its first error.
func writeUntil(ctx context.Context, c *clientv3.Client, stop <-chan struct{}) <-chan error {
	done := make(chan error, 1)
	go func() {
		pace := time.NewTicker(2 * time.Millisecond) // a steady load, not timing logic
		defer pace.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			case <-pace.C:
			}
			if _, err := c.Put(ctx, fmt.Sprintf("elect/%d", i%50), fmt.Sprint(i)); err != nil {
				done <- err
				return
			}
		}
	}()
	return done
}

// TestElectionStandbyTakesOver runs three elected workers during continuous writes and kills
// the active one twice: each time exactly one standby takes over, and afterwards the log is
// identical to etcd's history. A worker stopped cleanly gives up its place at once.
func TestElectionStandbyTakesOver(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	env := newEnv(t, ctx)

	var ws []*worker
	for n := range 3 {
		ws = append(ws, startWorker(t, ctx, env, fmt.Sprintf("w%d", n), 2*time.Second))
	}
	stopWrites := make(chan struct{})
	writes := writeUntil(ctx, env.etcd, stopWrites)

	waitCandidates(t, ctx, env, len(ws))
	for range 2 {
		act := activeOf(t, ctx, env, ws, 1)
		cs, err := Candidates(ctx, env.etcd, "/watchgate/ingest/"+env.log.Stream())
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) != len(ws) || cs[0].Name != act.name {
			t.Fatalf("candidates %+v, active %s", cs, act.name)
		}
		st, err := act.ing.Status(ctx)
		if err != nil || st.Role != "active" || st.Active == nil || st.Active.Name != act.name || len(st.Standbys) != len(ws)-1 {
			t.Fatalf("status of the active worker: %+v, %v", st, err)
		}
		at := act.ing.Published()
		killed := time.Now()
		defer act.kill()()
		ws = slices.DeleteFunc(ws, func(w *worker) bool { return w == act })
		next := activeOf(t, ctx, env, ws, at)
		t.Logf("%s killed at revision %d; %s took over in %v", act.name, at, next.name, time.Since(killed))
		ws = append(ws, startWorker(t, ctx, env, act.name+"'", 2*time.Second))
		waitCandidates(t, ctx, env, len(ws))
	}

	// A clean stop revokes the session: the worker leaves the election at once.
	act := activeOf(t, ctx, env, ws, 0)
	t0 := time.Now()
	act.stop()
	t.Logf("clean stop took %v", time.Since(t0))
	cs, err := Candidates(ctx, env.etcd, "/watchgate/ingest/"+env.log.Stream())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Name == act.name {
			t.Fatalf("%s still a candidate after a clean stop: %+v", act.name, cs)
		}
	}
	ws = slices.DeleteFunc(ws, func(w *worker) bool { return w == act })
	activeOf(t, ctx, env, ws, act.ing.Published())
	t.Logf("taken over after a clean stop in %v", time.Since(t0))

	close(stopWrites)
	if err := <-writes; err != nil {
		t.Fatal(err)
	}
	logMatchesEtcd(t, ctx, env)
}

// TestElectionDeposedStepsDown ends the active worker's session from outside, as an expiry
// during a partition would, while it is still running: it must stop publishing and stand by,
// another worker takes over, and the log stays identical to etcd's history.
func TestElectionDeposedStepsDown(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	env := newEnv(t, ctx)
	ws := []*worker{
		startWorker(t, ctx, env, "a", 5*time.Second),
		startWorker(t, ctx, env, "b", 5*time.Second),
	}
	stopWrites := make(chan struct{})
	writes := writeUntil(ctx, env.etcd, stopWrites)

	waitCandidates(t, ctx, env, len(ws))
	first := activeOf(t, ctx, env, ws, 1)
	cs, err := Candidates(ctx, env.etcd, "/watchgate/ingest/"+env.log.Stream())
	if err != nil {
		t.Fatal(err)
	}
	r, err := env.etcd.Get(ctx, cs[0].Key)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("leader key: %v %v", r, err)
	}
	if _, err := env.etcd.Revoke(ctx, clientv3.LeaseID(r.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	at := first.ing.Published()
	second := activeOf(t, ctx, env, slices.DeleteFunc(slices.Clone(ws), func(w *worker) bool { return w == first }), at)
	t.Logf("%s deposed at revision %d; %s took over", first.name, at, second.name)
	// The deposed worker notices from the delete of its key, as the new leader does; the two
	// are separate processes, so it may notice a moment after the other took over (the log's
	// fences make anything it publishes meanwhile harmless, which logMatchesEtcd checks).
	for first.ing.Active() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s still active after %s took over", first.name, second.name)
		case <-time.After(time.Millisecond): // polling a condition
		}
	}
	// Then it campaigns again and waits behind the new leader.
	for range 20 {
		if first.ing.Active() {
			t.Fatalf("%s still active after %s took over", first.name, second.name)
		}
		time.Sleep(10 * time.Millisecond) // sampling, not timing logic
	}

	close(stopWrites)
	if err := <-writes; err != nil {
		t.Fatal(err)
	}
	logMatchesEtcd(t, ctx, env)
}
