package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// The smoke tests run every scenario at tiny sizes on all three targets and check that it ran
// and counted correctly; they assert nothing about speed.

func TestMain(m *testing.M) {
	ServeIfChild() // the targets run as children of the test binary
	os.Exit(m.Run())
}

// runSmoke runs s on every target and checks that each row finished.
func runSmoke(t *testing.T, s Scenario) *Report {
	t.Helper()
	return runSmokeOn(t, s, AllTargets)
}

// runSmokeOn runs s on the given targets and checks that each row finished.
func runSmokeOn(t *testing.T, s Scenario, targets []string) *Report {
	t.Helper()
	ctx := testenv.Context(t, 5*time.Minute)
	profiles := t.TempDir()
	rep, err := Run(ctx, s, Config{Targets: targets, Dir: t.TempDir(), StallTimeout: time.Minute, Progress: testWriter{t}, ProfileDir: profiles})
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range targets {
		if m, _ := filepath.Glob(filepath.Join(profiles, s.Name()+"-"+target+"-*.pprof")); len(m) == 0 {
			t.Errorf("no CPU profile of %s", target)
		}
	}
	if len(rep.Rows) == 0 {
		t.Fatal("no rows")
	}
	for _, row := range rep.Rows {
		if row.Status != StatusOK {
			t.Errorf("%s %s: %s: %s", row.Target, row.Case, row.Status, row.Error)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + table.String())
	return rep
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// wantValue checks that every row has figure key equal to want.
func wantValue(t *testing.T, rep *Report, key string, want float64) {
	t.Helper()
	for _, row := range rep.Rows {
		if got, ok := row.Values[key]; !ok || got != want {
			t.Errorf("%s %s: %s = %v (present %v), want %v", row.Target, row.Case, key, got, ok, want)
		}
	}
}

// wantPositive checks that every row has figure key above zero.
func wantPositive(t *testing.T, rep *Report, keys ...string) {
	t.Helper()
	for _, row := range rep.Rows {
		for _, key := range keys {
			if got := row.Values[key]; !(got > 0) {
				t.Errorf("%s %s: %s = %v, want > 0", row.Target, row.Case, key, got)
			}
		}
	}
}

func TestWatchFanoutSmoke(t *testing.T) {
	s := WatchFanout{Watchers: 10, Streams: 3, Conns: 2, Keys: 1, Rate: 50, ValueSize: 64, Duration: time.Second}
	rep := runSmoke(t, s)
	wantValue(t, rep, "events", 10*50)
	wantValue(t, rep, "lost", 0)
	wantValue(t, rep, "out_of_order", 0)
	wantPositive(t, rep, "latency_p50_ms", "latency_p99_ms", "events_per_s", "cpu_s", "peak_rss_mib")
}

func TestWatchIdleSmoke(t *testing.T) {
	rep := runSmoke(t, WatchIdle{Watchers: 50, Streams: 5, Conns: 2})
	wantValue(t, rep, "watchers", 50)
	// No CPU figure: 50 creates take a few milliseconds, below the kernel's 10 ms CPU tick
	// (the fan-out smoke test covers the meter).
	wantPositive(t, rep, "create_s", "creates_per_s")
	for _, row := range rep.Rows {
		if _, ok := row.Values["heap_per_watcher_b"]; !ok {
			t.Errorf("%s: no heap figure", row.Target)
		}
	}
}

func TestWatchChurnSmoke(t *testing.T) {
	rep := runSmoke(t, WatchChurn{Live: 10, Streams: 3, Conns: 2, Churn: 20, Rate: 20, Duration: time.Second})
	wantValue(t, rep, "errors", 0)
	wantPositive(t, rep, "creates", "create_p50_ms", "create_p99_ms", "events")
}

func TestWatchResumeSmoke(t *testing.T) {
	rep := runSmoke(t, WatchResume{Watchers: 20, Streams: 4, Conns: 2, History: 30, Keys: 5, ValueSize: 32})
	wantValue(t, rep, "caught_up", 20)
	wantValue(t, rep, "events", 20*30)
	wantPositive(t, rep, "catch_up_s", "events_per_s")
}

func TestRangeSmoke(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(fmt.Sprintf("raw=%v", raw), func(t *testing.T) {
			rep := runSmoke(t, Range{Keys: 20, ValueSize: 32, Clients: 2, Duration: 200 * time.Millisecond, Raw: raw})
			if want := len(AllTargets) * len(RangeCases); len(rep.Rows) != want {
				t.Fatalf("%d rows, want %d", len(rep.Rows), want)
			}
			wantValue(t, rep, "errors", 0) // every response held the keys it should
			wantPositive(t, rep, "ops", "latency_p50_ms", "latency_p99_ms")
		})
	}
}

func TestIngestSmoke(t *testing.T) {
	rep := runSmoke(t, Ingest{Backlog: 200, Rate: 50, Duration: time.Second, ValueSize: 32})
	wantPositive(t, rep, "backlog_rev_per_s", "lag_p50_ms", "lag_p99_ms", "puts_per_s")
}

func TestCacheLoadSmoke(t *testing.T) {
	// More keys than one page of the replica's load (1,000), so that it reads several.
	rep := runSmokeOn(t, CacheLoad{Keys: 2500, ValueSize: 32}, []string{TargetWatchgate})
	wantValue(t, rep, "cached_keys", 2500)
	wantValue(t, rep, "raw_per_key_b", float64(len(cacheLoadPrefix)+8+32))
	wantPositive(t, rep, "ready_s", "ready_nocache_s", "heap_mib", "heap_nocache_mib", "estimate_per_key_b", "gateway_cpu_s")
	for _, row := range rep.Rows {
		if _, ok := row.Values["heap_per_key_b"]; !ok {
			t.Errorf("%s: no heap figure", row.Target)
		}
	}
	// The other targets have no cache: they are not measured.
	rep, err := Run(testenv.Context(t, time.Minute), CacheLoad{Keys: 1, ValueSize: 1}, Config{Targets: []string{TargetEtcd}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 0 {
		t.Errorf("on etcd: rows %+v, want none", rep.Rows)
	}
}

// TestStalledTargetIsReported points watch-fanout at a gateway whose event log has gone away:
// writes still reach etcd, but no event can reach the watchers. The run must end by itself with
// the row marked stalled and its partial counts, not hang.
func TestStalledTargetIsReported(t *testing.T) {
	st := stacktest.Start(t, nil)
	st.NATS.Shutdown()
	ctx := testenv.Context(t, 2*time.Minute)
	s := WatchFanout{Watchers: 3, Streams: 1, Conns: 1, Keys: 1, Rate: 20, ValueSize: 16, Duration: 500 * time.Millisecond}
	rep, err := Run(ctx, s, Config{Endpoints: map[string]string{"broken": st.ClientURL}, StallTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 1 {
		t.Fatalf("rows: %+v", rep.Rows)
	}
	row := rep.Rows[0]
	t.Logf("row: %+v", row)
	if row.Status != StatusStalled || !strings.Contains(row.Error, "no progress") {
		t.Errorf("status %q (%s), want stalled", row.Status, row.Error)
	}
	if row.Values["puts_per_s"] <= 0 || row.Values["lost"] != 3*10 {
		t.Errorf("partial figures %+v, want the puts counted and all 30 events lost", row.Values)
	}
}
