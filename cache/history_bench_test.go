package cache_test

import (
	"testing"

	"github.com/watchgate/watchgate/cache"
)

// benchHistoryLen is the ring size the benchmarks use: the gateway's default HistoryRevisions.
const benchHistoryLen = 10_000

// benchValue stands in for the gateway's *revision: the ring holds a pointer per revision.
type benchValue struct{ rev int64 }

// fullHistory returns a ring of benchHistoryLen revisions that has already wrapped part of the
// way round, so lookups exercise the index arithmetic of a ring in steady state rather than
// one that starts at slot 0. It returns the ring and the next revision to append.
func fullHistory(b *testing.B) (*cache.History[*benchValue], int64) {
	b.Helper()
	h := cache.NewHistory[*benchValue](benchHistoryLen, 0)
	rev := int64(1)
	for ; rev <= benchHistoryLen*3/2; rev++ {
		if err := h.Append(rev, &benchValue{rev: rev}, 1024); err != nil {
			b.Fatal(err)
		}
	}
	if h.Len() != benchHistoryLen {
		b.Fatalf("history holds %d revisions, want %d", h.Len(), benchHistoryLen)
	}
	return h, rev
}

// BenchmarkHistoryAppend measures Append to a full ring, so every append also evicts the oldest
// revision: the cost the hub pays per revision in steady state.
func BenchmarkHistoryAppend(b *testing.B) {
	h, rev := fullHistory(b)
	// One shared value: the benchmark measures the ring, not allocating what it holds.
	v := &benchValue{}
	b.ReportAllocs()
	for b.Loop() {
		if err := h.Append(rev, v, 1024); err != nil {
			b.Fatal(err)
		}
		rev++
	}
	if h.Len() != benchHistoryLen {
		b.Fatalf("history holds %d revisions after appending, want %d", h.Len(), benchHistoryLen)
	}
}

// BenchmarkHistoryGet measures Get of one held revision, cycling through every revision in the
// ring.
func BenchmarkHistoryGet(b *testing.B) {
	h, _ := fullHistory(b)
	oldest := h.Oldest()
	i := int64(0)
	b.ReportAllocs()
	for b.Loop() {
		rev := oldest + i%benchHistoryLen
		if v, ok := h.Get(rev); !ok || v.rev != rev {
			b.Fatalf("Get(%d) = %v, %v", rev, v, ok)
		}
		i++
	}
}

// BenchmarkHistoryFrom measures From starting at the oldest held revision (a watcher resuming
// from the far end of history), reusing the destination slice as the hub's catch-up loop does.
// "batch64" takes one catch-up batch (the hub's catchUpBatch); "all" copies out the whole ring.
func BenchmarkHistoryFrom(b *testing.B) {
	for _, bc := range []struct {
		name  string
		limit int
	}{
		{name: "batch64", limit: 64},
		{name: "all", limit: benchHistoryLen},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h, _ := fullHistory(b)
			oldest := h.Oldest()
			dst := make([]*benchValue, 0, bc.limit)
			b.ReportAllocs()
			for b.Loop() {
				dst = h.From(dst[:0], oldest, bc.limit)
				if len(dst) != bc.limit || dst[0].rev != oldest {
					b.Fatalf("From(%d, %d) returned %d revisions", oldest, bc.limit, len(dst))
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(bc.limit), "ns/revision")
		})
	}
}
