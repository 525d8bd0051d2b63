package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/watchgate/watchgate/internal/testenv"
)

// TestProbeCompactedFloor checks the revision probe's answers for reads at past revisions: a
// compacted one gets etcd's compacted error, a kept one and a current read get the revision,
// and readers hammering a compacted revision do not keep a current read from its answer.
func TestProbeCompactedFloor(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	member := testenv.Client(t, testenv.Etcd(t).Endpoint)
	var last int64
	for i := range 10 {
		resp, err := member.Put(ctx, "k", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	if _, err := member.Compact(ctx, last-3); err != nil {
		t.Fatal(err)
	}
	s := newBareServer(t, Options{})
	s.o.Member = member

	if _, err := s.revisionAt(ctx, last-5); !errors.Is(err, rpctypes.ErrGRPCCompacted) {
		t.Fatalf("read at a compacted revision: %v, want %v", err, rpctypes.ErrGRPCCompacted)
	}
	if rev, err := s.revisionAt(ctx, last-1); err != nil || rev != last {
		t.Fatalf("read at a kept revision: %d, %v; want %d", rev, err, last)
	}

	hammer, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for hammer.Err() == nil {
				if _, err := s.revisionAt(hammer, int64(2+i)); err != nil && !errors.Is(err, rpctypes.ErrGRPCCompacted) && hammer.Err() == nil {
					t.Errorf("read at compacted revision %d: %v", 2+i, err)
				}
			}
		})
	}
	for range 20 {
		if rev, err := s.currentRevision(ctx); err != nil || rev != last {
			t.Errorf("current read among reads at compacted revisions: %d, %v; want %d", rev, err, last)
		}
	}
	stop()
	wg.Wait()
	if probes := s.reads.probes.Load(); probes > 100 {
		t.Errorf("%d probes: reads at known-compacted revisions should not each send one", probes)
	}
}
