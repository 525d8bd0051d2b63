package faults

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/internal/testenv"
)

var long = flag.Bool("long", false, "run the fault suite's soak form: several rounds of every fault, longer outages")

// TestFaults runs writers and watchers through three gateway replicas while it kills and
// restarts, in turn: the active ingest worker (a standby takes over), a gateway replica
// (its watchers resume on another), one and then two JetStream nodes, and the etcd leader.
// Afterwards every watcher's history and the final keyspace of every replica must be exactly
// etcd's: nothing lost, duplicated or reordered. The short form (about 40 s) runs with every
// go test; -long repeats the faults with longer outages for a soak run.
func TestFaults(t *testing.T) {
	if testing.Short() && !*long {
		t.Skip("the fault suite takes about 40 s; it runs without -short")
	}
	rounds, hold := 1, 2*time.Second
	if *long {
		rounds, hold = 5, 5*time.Second
	}
	ctx := testenv.Context(t, time.Duration(rounds)*2*time.Minute+time.Minute)

	ec := startEtcdCluster(t, 3)
	nc := testenv.NATSCluster(t, 3)
	w := &world{t: t, ctx: ctx, etcd: ec.Endpoints(), natsURLs: nc.ClientURL(),
		logCfg: eventlog.Config{Replicas: 3}, ttl: 2 * time.Second, logger: slog.New(slog.DiscardHandler)}
	if testing.Verbose() {
		w.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	w.startWorker("ingest-0")
	w.startWorker("ingest-1")
	for _, port := range testenv.Ports(t, 3) {
		r := w.startReplica(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		w.replicas = append(w.replicas, r)
	}
	w.waitReady()
	direct := w.etcdClient(0)
	t.Cleanup(func() { direct.Close() })

	specs := []Watch{
		{Name: "all from 1", Key: "\x00", End: "\x00", Start: 1, PrevKV: true},
		{Name: "all from now", Key: "\x00", End: "\x00"},
		{Name: "writer 0", Key: "k/0/", End: "k/0" + string(rune('/'+1))},
		{Name: "writer 1 prev", Key: "k/1/", End: "k/1" + string(rune('/'+1)), PrevKV: true},
		{Name: "one key", Key: "k/2/07"},
		{Name: "from k/3", Key: "k/3/", End: "\x00", PrevKV: true},
	}
	for i := range 6 {
		specs = append(specs, Watch{Name: fmt.Sprintf("prefix k/%d", i), Key: fmt.Sprintf("k/%d/", i),
			End: fmt.Sprintf("k/%d0", i)})
	}
	conn, js := w.connectNATS()
	t.Cleanup(conn.Close)
	log, err := eventlog.Bind(ctx, js, w.logCfg)
	if err != nil {
		t.Fatal(err)
	}
	stream := log.Stream()
	clients := []*clientv3.Client{w.gatewayClient(), w.gatewayClient(), w.gatewayClient()}
	watchCtx, stopWatchers := context.WithCancel(ctx)
	defer stopWatchers()
	writeCtx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	l := NewLoad("steady")
	w.logf("phase steady")
	for i, spec := range specs {
		if _, err := l.Watch(watchCtx, clients[i%len(clients)], spec); err != nil {
			t.Fatal(err)
		}
	}
	for n := range 6 {
		l.Write(writeCtx, clients[n%len(clients)], n, 5*time.Millisecond)
	}
	phase := func(name string) {
		l.Begin(name)
		w.logf("phase %s", name)
	}
	w.waitProgress(direct, hold)

	for round := range rounds {
		sfx := ""
		if rounds > 1 {
			sfx = fmt.Sprintf(" #%d", round+1)
		}

		phase("ingest killed" + sfx)
		act := w.waitActive()
		at := act.ing.Published()
		act.kill()
		w.mu.Lock()
		w.workers = slices.DeleteFunc(w.workers, func(x *worker) bool { return x == act })
		w.mu.Unlock()
		next := w.waitActive()
		w.waitLogPast(at)
		w.logf("%s killed at revision %d; %s took over", act.name, at, next.name)
		w.startWorker(act.name + "'")

		phase("replica killed" + sfx)
		w.mu.Lock()
		victim := w.replicas[round%len(w.replicas)]
		w.mu.Unlock()
		victim.kill()
		w.logf("replica %s killed", victim.addr)
		w.waitProgress(direct, hold)
		r := w.startReplica(victim.addr)
		w.mu.Lock()
		w.replicas[slices.Index(w.replicas, victim)] = r
		w.mu.Unlock()
		w.waitReady()

		phase("1 NATS node down" + sfx)
		leader := testenv.StreamLeader(ctx, t, nc, js, stream)
		nc.Shutdown(leader)
		w.logf("NATS node %d (the stream leader) killed", leader)
		w.waitProgress(direct, hold)

		phase("2 NATS nodes down" + sfx)
		second := (leader + 1) % 3
		nc.Shutdown(second)
		w.logf("NATS node %d killed: no quorum", second)
		before := w.logLast()
		time.Sleep(hold) // an outage of this length, not timing logic
		if got := w.logLast(); got > before+int64(w.maxInFlight()) {
			t.Errorf("the log moved from %d to %d without a quorum", before, got)
		}
		phase("NATS restored" + sfx)
		for _, i := range []int{leader, second} {
			if err := nc.Restart(i); err != nil {
				t.Fatal(err)
			}
		}
		w.waitProgress(direct, hold)

		phase("etcd leader killed" + sfx)
		el := ec.Leader(t)
		w.logf("killing etcd member %d (the leader)", el)
		ec.Kill(t, el)
		w.waitProgress(direct, hold)
		ec.Restart(t, el)
	}
	phase("settle")
	w.waitProgress(direct, hold)
	stopWriters()
	l.WaitWriters()
	l.End()
	// What clients saw in each phase, logged before the checks so a failed run still shows it.
	for _, line := range l.Report() {
		t.Log(line)
	}

	// The checks: every watcher against etcd's history, the log against it, every replica's
	// keyspace against etcd's.
	last := w.syncWatchers(direct, l, clients)
	stopWatchers()
	l.WaitWatchers()
	h := History{From: eventlog.FirstRevision, Revisions: testenv.History(ctx, t, direct, eventlog.FirstRevision, last)}
	var bad []Violation
	for _, r := range l.Watchers() {
		bad = append(bad, CheckWatch(h, r.Recorded(), last)...)
	}
	bad = append(bad, w.checkLog(h)...)
	bad = append(bad, w.checkKeyspaces(direct)...)
	for _, v := range bad {
		t.Error(v)
	}
	t.Logf("%d revisions, %d watchers checked against etcd's history", len(h.Revisions), len(l.watchers))
}

// waitActive waits for an active ingest worker.
func (w *world) waitActive() *worker {
	w.t.Helper()
	for {
		if a := w.active(); a != nil {
			return a
		}
		select {
		case <-w.ctx.Done():
			w.t.Fatal("no active ingest worker")
		case <-time.After(10 * time.Millisecond): // polling, not timing logic
		}
	}
}

// logLast is the active worker's last acknowledged revision (0 if none is active).
func (w *world) logLast() int64 {
	if a := w.active(); a != nil {
		return a.ing.Published()
	}
	return 0
}

// maxInFlight is how many publishes may be acknowledged after a fault began: those already
// replicated when it struck.
func (w *world) maxInFlight() int { return 1024 }

// waitLogPast waits until the active worker has published past rev.
func (w *world) waitLogPast(rev int64) {
	w.t.Helper()
	for w.logLast() <= rev {
		select {
		case <-w.ctx.Done():
			w.t.Fatalf("the log did not move past %d", rev)
		case <-time.After(10 * time.Millisecond): // polling, not timing logic
		}
	}
}

// waitProgress lets the load run for d, then waits until the log and every replica have
// caught up with a write made then, so each phase ends with everything written in it
// delivered.
func (w *world) waitProgress(direct *clientv3.Client, d time.Duration) {
	w.t.Helper()
	time.Sleep(d) // the phase's length, not timing logic
	var rev int64
	for {
		r, err := direct.Get(w.ctx, "\x00", clientv3.WithCountOnly())
		if err == nil {
			rev = r.Header.Revision
			break
		}
		if w.ctx.Err() != nil {
			w.t.Fatal(err)
		}
	}
	w.waitLogPast(rev - 1)
	for !w.replicasApplied(rev) {
		select {
		case <-w.ctx.Done():
			w.t.Fatalf("the replicas did not apply revision %d", rev)
		case <-time.After(10 * time.Millisecond): // polling, not timing logic
		}
	}
}

// replicasApplied reports whether every live replica has applied revision rev.
func (w *world) replicasApplied(rev int64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.replicas {
		if !r.dead.Load() && r.srv.Applied() < rev {
			return false
		}
	}
	return true
}

// syncWatchers waits until every watcher has heard of etcd's last revision (asking the
// replicas for progress notifications through clients) and returns it.
func (w *world) syncWatchers(direct *clientv3.Client, l *Load, clients []*clientv3.Client) int64 {
	w.t.Helper()
	r, err := direct.Get(w.ctx, "\x00", clientv3.WithCountOnly())
	if err != nil {
		w.t.Fatal(err)
	}
	last := r.Header.Revision
	w.waitLogPast(last - 1)
	for l.Progress() < last {
		for _, c := range clients {
			_ = c.RequestProgress(w.ctx)
		}
		select {
		case <-w.ctx.Done():
			var applied []int64
			w.mu.Lock()
			for _, r := range w.replicas {
				applied = append(applied, r.srv.Applied())
			}
			w.mu.Unlock()
			w.t.Fatalf("watchers heard of revision %d, etcd is at %d; log at %d, replicas at %v", l.Progress(), last, w.logLast(), applied)
		case <-time.After(20 * time.Millisecond): // polling, not timing logic
		}
	}
	return last
}

// checkLog compares the event log with etcd's history.
func (w *world) checkLog(h History) []Violation {
	w.t.Helper()
	_, js := w.connectNATS()
	log, err := eventlog.Bind(w.ctx, js, w.logCfg)
	if err != nil {
		w.t.Fatal(err)
	}
	cur, err := log.Follow(w.ctx, h.From, 0)
	if err != nil {
		w.t.Fatal(err)
	}
	defer cur.Close()
	var resp []Response
	for next := h.From; next <= h.Last(); next++ {
		e, err := cur.Next(w.ctx)
		if err != nil {
			w.t.Fatal(err)
		}
		resp = append(resp, Response{Events: e.Events, Err: e.Err})
	}
	return CheckWatch(h, Watch{Name: "event log", Key: "\x00", End: "\x00", Start: h.From, PrevKV: true, Responses: resp}, h.Last())
}

// checkKeyspaces compares each replica's answer for the whole keyspace with etcd's.
func (w *world) checkKeyspaces(direct *clientv3.Client) []Violation {
	w.t.Helper()
	want, err := direct.Get(w.ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		w.t.Fatal(err)
	}
	var out []Violation
	for _, ep := range w.endpoints() {
		c := testenv.Client(w.t, ep)
		for _, serializable := range []bool{false, true} {
			opts := []clientv3.OpOption{clientv3.WithFromKey()}
			name := ep + " linearizable"
			if serializable {
				opts = append(opts, clientv3.WithSerializable())
				name = ep + " serializable"
			}
			got, err := c.Get(w.ctx, "\x00", opts...)
			if err != nil {
				w.t.Fatal(err)
			}
			if got.Header.Revision != want.Header.Revision {
				out = append(out, Violation{Watch: name, Guarantee: "keyspace", Detail: fmt.Sprintf("at revision %d, etcd at %d", got.Header.Revision, want.Header.Revision)})
				continue
			}
			out = append(out, CheckKeyspace(name, want.Kvs, got.Kvs)...)
		}
	}
	return out
}
