package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/watchgate/watchgate/internal/testenv"
)

// Helpers for the end-to-end tests, which run the real binary as a subprocess.

// buildWatchgate builds this command into a temporary directory.
func buildWatchgate(ctx context.Context, t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "watchgate")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// freePorts returns n distinct free loopback ports (see testenv.Ports), as flag values.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for _, p := range testenv.Ports(t, n) {
		out = append(out, strconv.Itoa(p))
	}
	return out
}

// process is a running watchgate subcommand.
type process struct {
	name           string // the subcommand, for messages
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	done           chan struct{} // closed when the process has exited; err is then set
	err            error
}

// start runs the binary with args, in the test's environment minus its WATCHGATE_ variables
// plus env ("NAME=value" each). The process is killed at cleanup if the test has not stopped it.
func start(t *testing.T, bin string, env []string, args ...string) *process {
	t.Helper()
	p := &process{name: args[0], stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
			t.Logf("killed watchgate %s at cleanup; stderr:\n%s", p.name, p.stderr)
		}
	})
	return p
}

// stop sends sig and requires a clean exit (status 0) within 30 s. It returns stdout.
func (p *process) stop(t *testing.T, sig os.Signal) string {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%v: %v", sig, err)
	}
	start := time.Now()
	select {
	case <-p.done:
		t.Logf("watchgate %s exited %v after %v", p.name, time.Since(start).Round(time.Millisecond), sig)
	case <-time.After(30 * time.Second):
		t.Fatalf("watchgate %s still running 30s after %v; stderr:\n%s", p.name, sig, p.stderr)
	}
	if p.err != nil {
		t.Fatalf("watchgate %s exited with %v after %v, want status 0; stderr:\n%s", p.name, p.err, sig, p.stderr)
	}
	return p.stdout.String()
}

// wait waits for a process that exits by itself (30 s at most) and returns its stdout. It fails
// the test if the process exits non-zero.
func (p *process) wait(t *testing.T) string {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("watchgate %s still running after 30s; stderr:\n%s", p.name, p.stderr)
	}
	if p.err != nil {
		t.Fatalf("watchgate %s exited with %v; stderr:\n%s", p.name, p.err, p.stderr)
	}
	return p.stdout.String()
}

// waitReady polls url until it answers 200, the process exits or ctx ends (a minute at most).
func waitReady(ctx context.Context, t *testing.T, p *process, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	last := "no answer"
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%s: %s", resp.Status, body)
		}
		select {
		case <-p.done:
			t.Fatalf("watchgate %s exited before ready (%v); stderr:\n%s", p.name, p.err, p.stderr)
		case <-ctx.Done():
			t.Fatalf("watchgate %s not ready at %s (last: %s); stderr:\n%s", p.name, url, last, p.stderr)
		case <-tick.C:
		}
	}
}

// waitMetrics polls url until its body holds every name, or ctx ends.
func waitMetrics(ctx context.Context, t *testing.T, url string, names ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var body []byte
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			missing := false
			for _, n := range names {
				missing = missing || !bytes.Contains(body, []byte(n))
			}
			if !missing {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s lacks some of %q; last body:\n%s", url, names, body)
		case <-tick.C:
		}
	}
}

func newClient(t *testing.T, addr string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints: []string{addr}, DialTimeout: 10 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// syncBuffer is a bytes.Buffer safe for the process's writes and the test's reads.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// event is a watch event reduced to what the tests compare.
type event struct {
	Rev        int64
	Type       string // PUT or DELETE
	Key, Value string
}

// watchUntil watches the whole keyspace from revision from and returns the events up to and
// including revision until (30 s at most).
func watchUntil(ctx context.Context, t *testing.T, cli *clientv3.Client, from, until int64) []event {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var got []event
	wch := cli.Watch(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(from))
	for len(got) == 0 || got[len(got)-1].Rev < until {
		resp, ok := <-wch
		if !ok {
			t.Fatalf("watch from revision %d ended after %d events: %v", from, len(got), ctx.Err())
		}
		if err := resp.Err(); err != nil {
			t.Fatalf("watch from revision %d: %v", from, err)
		}
		for _, e := range resp.Events {
			ev := event{Rev: e.Kv.ModRevision, Type: "PUT", Key: string(e.Kv.Key), Value: string(e.Kv.Value)}
			if e.Type == mvccpb.Event_DELETE {
				ev.Type = "DELETE"
			}
			got = append(got, ev)
		}
	}
	return got
}
