package main

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestDevKilledKeepsEverything is the persistence check: `watchgate dev` (etcd, NATS JetStream,
// ingest and the gateway in one process) is killed with SIGKILL in the middle of a stream of
// writes, then started again on the same data dir. Every acknowledged write must be there, and
// a watch from revision 1 through the gateway (served from the event log) must equal etcd's own
// history: ingest picked up where the log ended, losing and repeating nothing.
func TestDevKilledKeepsEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it twice; skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()

	bin := buildWatchgate(ctx, t)
	dataDir := t.TempDir()
	p := freePorts(t, 5)
	clientAddr, httpAddr, etcdAddr := "127.0.0.1:"+p[0], "127.0.0.1:"+p[1], "127.0.0.1:"+p[2]
	args := []string{"dev", "--data-dir", dataDir,
		"--listen-client", clientAddr, "--listen-http", httpAddr,
		"--etcd-client-addr", etcdAddr, "--etcd-peer-addr", "127.0.0.1:" + p[3],
		"--nats-port", p[4]}

	dev := start(t, bin, nil, args...)
	waitReady(ctx, t, dev, "http://"+httpAddr+"/readyz")
	cli := newClient(t, clientAddr)

	// Writers through the gateway until the kill; each remembers what etcd acknowledged.
	var (
		mu    sync.Mutex
		acked = map[string]int64{} // key -> revision of its last acknowledged put
		top   int64                // the newest acknowledged revision
	)
	wctx, stopWriters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; wctx.Err() == nil; i++ {
				k := fmt.Sprintf("persist/%d/%d", w, i%64)
				resp, err := cli.Put(wctx, k, fmt.Sprint(i))
				if err != nil {
					return // the kill, or the end of the test
				}
				mu.Lock()
				acked[k] = max(acked[k], resp.Header.Revision)
				top = max(top, resp.Header.Revision)
				mu.Unlock()
			}
		})
	}
	waitMetrics(ctx, t, "http://"+httpAddr+"/metrics", "watchgate_ingest_revisions_total")
	for {
		mu.Lock()
		n, rev := len(acked), top
		mu.Unlock()
		if n == 4*64 && rev >= 1500 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("writers did not get going")
		case <-time.After(10 * time.Millisecond): // polling, not timing logic
		}
	}
	if err := dev.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-dev.done
	stopWriters()
	wg.Wait()
	cli.Close()

	dev = start(t, bin, nil, args...)
	waitReady(ctx, t, dev, "http://"+httpAddr+"/readyz")
	cli = newClient(t, clientAddr)
	direct := newClient(t, etcdAddr)

	// Every acknowledged write survived (a later unacknowledged one may have landed too).
	get, err := direct.Get(ctx, "persist/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]int64{}
	for _, kv := range get.Kvs {
		have[string(kv.Key)] = kv.ModRevision
	}
	for k, rev := range acked {
		if have[k] < rev {
			t.Errorf("%s: acknowledged at revision %d, after the restart at %d", k, rev, have[k])
		}
	}
	// The gateway answers the same keyspace as etcd, and its history from revision 1 is etcd's.
	gw, err := cli.Get(ctx, "persist/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(kvs(get.Kvs), kvs(gw.Kvs)); diff != "" {
		t.Errorf("keys through the gateway after the restart (-etcd +gateway):\n%s", diff)
	}
	last := get.Header.Revision
	want := watchUntil(ctx, t, direct, 1, last)
	got := watchUntil(ctx, t, cli, 1, last)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("watch from revision 1 after the kill (-etcd +gateway):\n%s", diff)
	}
	t.Logf("killed after %d revisions; %d keys acknowledged", last, len(acked))
	cli.Close()
	direct.Close()
	dev.stop(t, syscall.SIGINT)
}

// kvs renders key-values as key -> "value@mod_revision" for comparison.
func kvs(in []*mvccpb.KeyValue) map[string]string {
	out := make(map[string]string, len(in))
	for _, kv := range in {
		out[string(kv.Key)] = fmt.Sprintf("%s@%d", kv.Value, kv.ModRevision)
	}
	return out
}
