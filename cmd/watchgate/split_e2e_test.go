package main

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/watchgate/watchgate/internal/testenv"
)

// TestIngestAndGateway runs the split deployment with the real binary: `watchgate ingest` and
// `watchgate gateway` as separate processes against a real etcd and NATS JetStream, configured
// partly by environment variables. Writes go through the gateway, reach the log through ingest
// and come back to a watch through the gateway; both stop cleanly on SIGTERM.
func TestIngestAndGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs real servers; skipped in -short mode")
	}
	ctx := testenv.Context(t, 3*time.Minute)
	bin := buildWatchgate(ctx, t)
	etcd := testenv.Etcd(t)
	ns := testenv.NATS(t)
	p := freePorts(t, 4)
	clientAddr, gwHTTP, ingestHTTP, standbyHTTP := "127.0.0.1:"+p[0], "127.0.0.1:"+p[1], "127.0.0.1:"+p[2], "127.0.0.1:"+p[3]

	// ingest takes its upstreams, stream and limits from the environment, and logs only warnings.
	ing := start(t, bin,
		[]string{"WATCHGATE_ETCD_ENDPOINTS=" + etcd.Endpoint, "WATCHGATE_NATS_URL=" + ns.ClientURL(),
			"WATCHGATE_STREAM=SPLIT", "WATCHGATE_LOG_MAX_AGE=1h", "WATCHGATE_LOG_MAX_BYTES=1073741824"},
		"ingest", "--listen-http", ingestHTTP, "--log-level", "warn", "--name", "ing-a")
	waitReady(ctx, t, ing, "http://"+ingestHTTP+"/healthz")
	// A second worker for the same stream stands by.
	// (Every worker of a stream applies its limits to it, so they share their configuration.)
	standby := start(t, bin, nil, "ingest", "--etcd-endpoints", etcd.Endpoint, "--nats-url", ns.ClientURL(),
		"--stream", "SPLIT", "--log-max-age", "1h", "--log-max-bytes", "1073741824",
		"--listen-http", standbyHTTP, "--name", "ing-b")
	// gateway's --stream beats a wrong WATCHGATE_STREAM.
	gw := start(t, bin,
		[]string{"WATCHGATE_STREAM=WRONG", "WATCHGATE_ADVERTISE_CLIENT_URL=http://gw.example:2379"},
		"gateway", "--etcd-endpoints", etcd.Endpoint, "--nats-url", ns.ClientURL(), "--stream", "SPLIT",
		"--listen-client", clientAddr, "--listen-http", gwHTTP, "--log-format", "json")
	waitReady(ctx, t, gw, "http://"+gwHTTP+"/readyz")
	waitReady(ctx, t, standby, "http://"+standbyHTTP+"/healthz")

	cli := newClient(t, clientAddr)
	var want []event
	for i := range 10 {
		k, v := fmt.Sprintf("split/%d", i), fmt.Sprint(i)
		resp, err := cli.Put(ctx, k, v)
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		want = append(want, event{resp.Header.Revision, "PUT", k, v})
	}
	rev := want[len(want)-1].Rev
	// The workers' election keys are in the keyspace too; compare the test's own keys.
	got := slices.DeleteFunc(watchUntil(ctx, t, cli, 1, rev), func(e event) bool { return !strings.HasPrefix(e.Key, "split/") })
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("watch from revision 1 through the gateway (-want +got):\n%s", diff)
	}

	// The stream ingest made has the name and limits the environment gave it.
	js, err := jetstream.New(testenv.Conn(t, ns.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, "SPLIT")
	if err != nil {
		t.Fatalf("stream SPLIT: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxAge != time.Hour || info.Config.MaxBytes != 1<<30 || info.State.LastSeq != uint64(rev) {
		t.Errorf("stream SPLIT: max age %v, max bytes %d, last seq %d; want 1h, %d, %d",
			info.Config.MaxAge, info.Config.MaxBytes, info.State.LastSeq, 1<<30, rev)
	}
	if _, err := js.Stream(ctx, "WRONG"); err == nil {
		t.Error("stream WRONG exists: the gateway's --stream flag should have beaten WATCHGATE_STREAM")
	}

	waitMetrics(ctx, t, "http://"+ingestHTTP+"/metrics", "watchgate_ingest_revisions_total")
	waitMetrics(ctx, t, "http://"+gwHTTP+"/metrics", "watchgate_gateway_revisions_in_total")

	// `watchgate ingest status` names the active worker and the standby, and the log's lag.
	status := start(t, bin, nil, "ingest", "status", "--etcd-endpoints", etcd.Endpoint, "--nats-url", ns.ClientURL(), "--stream", "SPLIT")
	out := status.wait(t)
	for _, want := range []string{"stream SPLIT: log at revision", "active   ing-a (http://" + ingestHTTP + ")", "standby  ing-b (http://" + standbyHTTP + ")"} {
		if !strings.Contains(out, want) {
			t.Errorf("ingest status does not say %q:\n%s", want, out)
		}
	}
	// Stopping the active worker cleanly hands the stream to the standby at once.
	ing.stop(t, syscall.SIGTERM)
	waitMetrics(ctx, t, "http://"+standbyHTTP+"/status", `"role":"active"`)
	if _, err := cli.Put(ctx, "split/after", "x"); err != nil {
		t.Fatal(err)
	}
	waitMetrics(ctx, t, "http://"+standbyHTTP+"/metrics", "watchgate_ingest_revisions_total")

	cli.Close()
	if out := gw.stop(t, syscall.SIGTERM); out != "" {
		t.Errorf("gateway printed to stdout: %q", out)
	}
	if !strings.Contains(gw.stderr.String(), `"advertise":"http://gw.example:2379"`) {
		t.Errorf("gateway did not log the advertised URL from WATCHGATE_ADVERTISE_CLIENT_URL as JSON; stderr:\n%s", gw.stderr)
	}
	standby.stop(t, syscall.SIGTERM)
	if strings.Contains(ing.stderr.String(), "level=INFO") {
		t.Errorf("ingest logged at info level despite --log-level warn; stderr:\n%s", ing.stderr)
	}
}
