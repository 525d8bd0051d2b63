package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/cache"
	"github.com/watchgate/watchgate/ingest"
	"github.com/watchgate/watchgate/internal/testenv"
)

// TestLoadStreamedAndPaged checks that the two ways of loading the keyspace from a member, by
// RangeStream (etcd 3.7) and in pages (older members), read the same keys at the same
// revision, for a prefix and for the whole keyspace.
func TestLoadStreamedAndPaged(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	member := testenv.Client(t, testenv.Etcd(t).Endpoint)
	for i := range 25 {
		for _, p := range []string{"a/", "b/"} {
			if _, err := member.Put(ctx, fmt.Sprintf("%s%02d", p, i), fmt.Sprint(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	s := newBareServer(t, Options{})
	s.o.Member = member
	all := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}
	for _, r := range [][2]string{{"a/", "a0"}, {"\x00", "\x00"}} {
		streamed, paged := cache.NewKeyspace(nil, 0), cache.NewKeyspace(nil, 0)
		srev, err := s.streamPrefix(ctx, streamed, r[0], r[1], 0)
		if err != nil {
			t.Fatal(err)
		}
		prev, err := s.pagePrefix(ctx, paged, r[0], r[1], 0, 7)
		if err != nil {
			t.Fatal(err)
		}
		if srev != prev {
			t.Fatalf("%q: streamed at %d, paged at %d", r[0], srev, prev)
		}
		for _, ks := range []*cache.Keyspace{streamed, paged} {
			if err := ks.Insert(srev, nil); err != nil {
				t.Fatal(err)
			}
		}
		sv, pv := streamed.View(), paged.View()
		want := sv.Range(all, sv.Rev, nil)
		if n := len(want.Kvs); n == 0 {
			t.Fatalf("%q: nothing loaded", r[0])
		}
		if diff := cmp.Diff(want, pv.Range(all, pv.Rev, nil), protocmp.Transform()); diff != "" {
			t.Errorf("%q: (-streamed +paged):\n%s", r[0], diff)
		}
	}
}

// TestKeyspaceCatchesUpFromLog checks that a keyspace read at a revision the history ring no
// longer reaches back to (a large load under steady writes) is moved forward from the event
// log and then installed, and ends equal to a fresh load.
func TestKeyspaceCatchesUpFromLog(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	member := testenv.Client(t, testenv.Etcd(t).Endpoint)
	_, js := testenv.JetStream(t, testenv.NATS(t).ClientURL())
	log := testenv.EventLog(ctx, t, js)
	ing, err := ingest.New(ingest.Options{Member: member, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = ing.Run(runCtx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	var old, last int64
	for i := range 40 {
		resp, err := member.Put(ctx, fmt.Sprintf("k/%02d", i%7), fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 9 {
			old = resp.Header.Revision
		}
		last = resp.Header.Revision
	}
	s, err := New(Options{Member: member, JetStream: js, HistoryRevisions: 5, CacheMaxBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	s.hub.log = log
	wg.Go(func() { _ = s.hub.run(runCtx) })
	for s.Applied() < last {
		select {
		case <-ctx.Done():
			t.Fatal("the hub did not apply the log")
		case <-time.After(time.Millisecond):
		}
	}

	ks := cache.NewKeyspace(nil, 0)
	resp, err := member.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(old))
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Insert(old, resp.Kvs); err != nil {
		t.Fatal(err)
	}
	if err := s.hub.install(ks); !errors.Is(err, errBehindHistory) {
		t.Fatalf("install of a keyspace behind the ring: %v, want %v", err, errBehindHistory)
	}
	if err := s.hub.catchUpKeys(ctx, ks); err != nil {
		t.Fatal(err)
	}
	if err := s.hub.install(ks); err != nil {
		t.Fatal(err)
	}
	fresh, err := s.loadKeyspace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	all := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}
	got, want := ks.View(), fresh.View()
	if got.Rev != want.Rev {
		t.Fatalf("caught up to %d, fresh load at %d", got.Rev, want.Rev)
	}
	if diff := cmp.Diff(want.Range(all, want.Rev, nil), got.Range(all, got.Rev, nil), protocmp.Transform()); diff != "" {
		t.Errorf("(-fresh +caught up):\n%s", diff)
	}
}
