package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/watchgate/watchgate/bench"
)

// TestBenchCommand runs the real binary's bench command twice at tiny sizes: once starting its
// own target (a child process of the binary itself), once against a running `watchgate dev`
// given by --endpoints. Each run must print a JSON report whose row finished and counted every
// event.
func TestBenchCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs servers; skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	bin := buildWatchgate(ctx, t)
	sizes := []string{"watch-fanout", "--watchers", "4", "--streams", "2", "--conns", "1", "--rate", "20", "--duration", "1s", "--json"}

	check := func(t *testing.T, args ...string) {
		out, err := exec.CommandContext(ctx, bin, append(args, "--dir", t.TempDir())...).Output()
		if err != nil {
			stderr := ""
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("watchgate %v: %v\n%s", args, err, stderr)
		}
		var rep bench.Report
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("report is not JSON: %v\n%s", err, out)
		}
		if len(rep.Rows) != 1 {
			t.Fatalf("%d rows, want 1:\n%s", len(rep.Rows), out)
		}
		row := rep.Rows[0]
		if row.Status != bench.StatusOK || row.Values["events"] != 4*20 || row.Values["lost"] != 0 {
			t.Errorf("row %+v, want ok with 80 events and none lost", row)
		}
		t.Logf("%s: %+v", row.Target, row.Values)
	}

	t.Run("own target", func(t *testing.T) {
		check(t, append([]string{"bench"}, append(sizes, "--targets", "watchgate")...)...)
	})
	t.Run("endpoints", func(t *testing.T) {
		p := freePorts(t, 5)
		clientAddr, httpAddr := "127.0.0.1:"+p[0], "127.0.0.1:"+p[1]
		dev := start(t, bin, nil, "dev", "--data-dir", t.TempDir(), "--listen-client", clientAddr, "--listen-http", httpAddr,
			"--etcd-client-addr", "127.0.0.1:"+p[2], "--etcd-peer-addr", "127.0.0.1:"+p[3], "--nats-port", p[4])
		waitReady(ctx, t, dev, "http://"+httpAddr+"/readyz")
		check(t, append([]string{"bench"}, append(sizes, "--endpoints", "dev="+clientAddr)...)...)
		dev.stop(t, syscall.SIGTERM)
	})
}
