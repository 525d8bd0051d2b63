package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchgate/watchgate/ingest"
	"github.com/watchgate/watchgate/internal/stacktest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// BenchmarkIngest measures ingest at saturation: b.N revisions are written to etcd first (not
// timed), then the clock runs while a fresh ingest worker moves the whole backlog into the event
// log. The figure is revisions/s.
func BenchmarkIngest(b *testing.B) {
	ctx := testenv.Context(b, 10*time.Minute)
	e := testenv.Etcd(b)
	ns := testenv.NATS(b)
	c := testenv.Client(b, e.Endpoint)
	_, js := testenv.JetStream(b, ns.ClientURL())
	log := testenv.EventLog(ctx, b, js)
	writeConcurrently(ctx, b, c, b.N, 64)
	last := testenv.Rev(ctx, b, c)
	ing, err := ingest.New(ingest.Options{Member: c, Log: log})
	if err != nil {
		b.Fatal(err)
	}

	b.ResetTimer()
	start := time.Now()
	ictx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = ing.Run(ictx); close(done) }()
	for ing.Published() < last {
		time.Sleep(100 * time.Microsecond) // polling for completion; the figure is a rate
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	<-done
	b.ReportMetric(float64(last-1)/elapsed.Seconds(), "revisions/s")
}

// writeConcurrently writes n revisions with the given number of concurrent writers.
func writeConcurrently(ctx context.Context, b *testing.B, c *clientv3.Client, n, writers int) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := w; i < n; i += writers {
				if _, err := c.Put(ctx, fmt.Sprintf("bench/%d", i%1000), "v"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// BenchmarkPutToWatchEvent measures the time from issuing a put to receiving its watch event,
// one put at a time, on a watch opened directly on etcd and on one opened through a gateway
// replica, in the same run on the same etcd. It reports p50 and p99 in microseconds.
func BenchmarkPutToWatchEvent(b *testing.B) {
	st := stacktest.Start(b, nil)
	targets := []struct{ name, endpoint string }{
		{"etcd", st.Etcd.Endpoint},
		{"watchgate", st.ClientURL},
	}
	writer := testenv.Client(b, st.Etcd.Endpoint)
	for _, tg := range targets {
		b.Run(tg.name, func(b *testing.B) {
			ctx := testenv.Context(b, 10*time.Minute)
			watcher := testenv.Client(b, tg.endpoint)
			key := "latency/" + tg.name
			wch := watcher.Watch(ctx, key, clientv3.WithCreatedNotify())
			if resp := <-wch; !resp.Created {
				b.Fatalf("watch not created: %v", resp.Err())
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				r, err := writer.Put(ctx, key, fmt.Sprint(i))
				if err != nil {
					b.Fatal(err)
				}
				for got := false; !got; {
					resp := <-wch
					if err := resp.Err(); err != nil {
						b.Fatal(err)
					}
					for _, ev := range resp.Events {
						got = got || ev.Kv.ModRevision == r.Header.Revision
					}
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
