package gateway

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestSendBoundsHoldForAClientThatNeverReads applies far more than a stream can hold to a
// watcher whose client never reads, with each send limit set low in turn. The stream's queue
// must stay within the limit (in responses, or in bytes), the watcher must leave the synced set
// for catching up, and its catch-up must wait for room rather than build responses ahead: a
// client that never reads costs the replica a bounded amount of memory.
func TestSendBoundsHoldForAClientThatNeverReads(t *testing.T) {
	value := []byte(strings.Repeat("v", 1000))
	for _, c := range []struct {
		name  string
		o     Options
		check func(t *testing.T, st *watchStream, queued int, bytes int64)
	}{
		{"buffer", Options{WatchSendBuffer: 8}, func(t *testing.T, st *watchStream, queued int, _ int64) {
			if queued > 8 {
				t.Errorf("%d responses queued, limit 8", queued)
			}
		}},
		{"bytes", Options{WatchSendBytes: 5000}, func(t *testing.T, st *watchStream, _ int, bytes int64) {
			if bytes > 5000 {
				t.Errorf("%d event bytes queued, limit 5000", bytes)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := newBareServer(t, c.o)
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				st := s.bareStream(ctx, s.o.WatchSendBuffer)
				w := newWatcher(st, 0, &pb.WatchCreateRequest{Key: []byte("k"), PrevKv: true}, []byte("k"), nil)
				st.watchers[0] = w
				if _, err := s.hub.add(w, 1); err != nil {
					t.Fatal(err)
				}
				for rev := int64(1); rev <= 200; rev++ {
					s.hub.apply(bareEntry(t, rev, "k", value))
				}
				s.hub.mu.Lock()
				synced := w.group != nil
				s.hub.mu.Unlock()
				if synced {
					t.Fatal("the watcher is still synced; its stream never filled")
				}
				// Let the catch-up goroutine run until it blocks: waiting for room it cannot get.
				synctest.Wait()
				queued, bytes := len(st.out), int64(0)
				for range queued {
					m := <-st.out
					bytes += int64(m.bytes)
				}
				c.check(t, st, queued, bytes)
				if queued == 0 {
					t.Fatal("nothing was queued")
				}
				cancel()
			})
		})
	}
}

// TestHistoryRingLimits: the history ring keeps at most HistoryRevisions revisions, and no more
// than HistoryBytes of them (counted as the log message plus its decoded events, twice the
// message).
func TestHistoryRingLimits(t *testing.T) {
	value := []byte(strings.Repeat("v", 1000))
	for _, c := range []struct {
		name string
		o    Options
		want int
	}{
		{"revisions", Options{HistoryRevisions: 5}, 5},
		{"bytes", Options{HistoryBytes: 10 * 2 * 2100}, 10},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newBareServer(t, c.o)
			for rev := int64(1); rev <= 50; rev++ {
				s.hub.apply(bareEntry(t, rev, "k", value))
			}
			s.hub.mu.Lock()
			n, oldest := s.hub.ring.Len(), s.hub.ring.Oldest()
			s.hub.mu.Unlock()
			if n > c.want || n == 0 || oldest != 50-int64(n)+1 {
				t.Errorf("ring holds %d revisions from %d, want at most %d ending at 50", n, oldest, c.want)
			}
		})
	}
}
