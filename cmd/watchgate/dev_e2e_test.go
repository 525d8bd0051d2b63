package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestDevRestartKeepsHistory runs the real binary: `watchgate dev` on a data dir, writes
// through the gateway, stops it with SIGINT, starts it again on the same data dir and checks
// that every key survived and that a watch from revision 1 replays the whole history, in order,
// each revision exactly once.
func TestDevRestartKeepsHistory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it twice; skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()

	bin := buildWatchgate(ctx, t)
	dataDir := t.TempDir()
	p := freePorts(t, 5)
	clientAddr, httpAddr := "127.0.0.1:"+p[0], "127.0.0.1:"+p[1]
	args := []string{"dev", "--data-dir", dataDir,
		"--listen-client", clientAddr, "--listen-http", httpAddr,
		"--etcd-client-addr", "127.0.0.1:" + p[2], "--etcd-peer-addr", "127.0.0.1:" + p[3],
		"--nats-port", p[4]}

	// First run: write, delete, remember what happened.
	dev := start(t, bin, nil, args...)
	waitReady(ctx, t, dev, "http://"+httpAddr+"/readyz")
	cli := newClient(t, clientAddr)
	var want []event
	live := map[string]string{}
	for i := range 50 {
		k, v := fmt.Sprintf("e2e/key-%02d", i), fmt.Sprintf("value-%d", i)
		resp, err := cli.Put(ctx, k, v)
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		want = append(want, event{resp.Header.Revision, "PUT", k, v})
		live[k] = v
	}
	for i := 0; i < 50; i += 5 {
		k := fmt.Sprintf("e2e/key-%02d", i)
		resp, err := cli.Delete(ctx, k)
		if err != nil || resp.Deleted != 1 {
			t.Fatalf("delete %s: deleted %v, err %v", k, resp, err)
		}
		want = append(want, event{resp.Header.Revision, "DELETE", k, ""})
		delete(live, k)
	}
	rev := want[len(want)-1].Rev
	for i, e := range want {
		if e.Rev != int64(i)+2 {
			t.Fatalf("write %d got revision %d, want %d: the gateway should pass writes straight to etcd", i, e.Rev, i+2)
		}
	}
	// Metrics from both components reach /metrics once ingest has published our writes.
	waitMetrics(ctx, t, "http://"+httpAddr+"/metrics", "watchgate_gateway_revisions_in_total", "watchgate_ingest_revisions_total")
	cli.Close()
	out := dev.stop(t, syscall.SIGINT)
	for _, s := range []string{
		"etcdctl --endpoints=" + clientAddr + " put hello world",
		"http://" + clientAddr, "nats://127.0.0.1:" + p[4], "http://" + httpAddr + "/metrics", dataDir,
	} {
		if !strings.Contains(out, s) {
			t.Errorf("startup banner lacks %q; stdout:\n%s", s, out)
		}
	}

	// Second run on the same data dir and ports.
	dev = start(t, bin, nil, args...)
	waitReady(ctx, t, dev, "http://"+httpAddr+"/readyz")
	cli = newClient(t, clientAddr)

	get, err := cli.Get(ctx, "e2e/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	got := map[string]string{}
	for _, kv := range get.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	if diff := cmp.Diff(live, got); diff != "" {
		t.Errorf("keys after restart (-want +got):\n%s", diff)
	}
	if get.Header.Revision != rev {
		t.Errorf("revision after restart = %d, want %d", get.Header.Revision, rev)
	}

	replay := watchUntil(ctx, t, cli, 1, rev)
	if diff := cmp.Diff(want, replay); diff != "" {
		t.Errorf("watch from revision 1 after restart (-want +got):\n%s", diff)
	}
	cli.Close()
	dev.stop(t, syscall.SIGINT)
}
