package ingest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/watchgate/watchgate/internal/testenv"
)

// BenchmarkStandbyTakeover measures how long the log stops moving when the active ingest
// worker crashes (its connections cut, its session lease left to expire) under a steady write
// load, with the default election TTL. Each iteration is one kill; the p50 and max are over all
// of them (-benchtime 20x for twenty kills).
func BenchmarkStandbyTakeover(b *testing.B) {
	ctx := testenv.Context(b, 15*time.Minute) // b.N is not known yet under b.Loop
	env := newEnv(b, ctx)
	ws := []*worker{startWorker(b, ctx, env, "w0", 0), startWorker(b, ctx, env, "w1", 0)}
	waitCandidates(b, ctx, env, len(ws))
	stop := make(chan struct{})
	writes := writeUntil(ctx, env.etcd, stop)

	var took []time.Duration
	b.ResetTimer()
	for n := 0; b.Loop(); n++ {
		act := activeOf(b, ctx, env, ws, 1)
		at := act.ing.Published()
		killed := time.Now()
		defer act.kill()()
		ws = slices.DeleteFunc(ws, func(w *worker) bool { return w == act })
		activeOf(b, ctx, env, ws, at)
		took = append(took, time.Since(killed))
		ws = append(ws, startWorker(b, ctx, env, fmt.Sprintf("w%d", n+2), 0))
		waitCandidates(b, ctx, env, len(ws))
	}
	b.StopTimer()
	close(stop)
	if err := <-writes; err != nil {
		b.Fatal(err)
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "max-ms")
	b.ReportMetric(0, "ns/op")
	b.Logf("%d kills: takeover %v", len(took), took)
}
