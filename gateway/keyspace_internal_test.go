package gateway

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/cache"
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
