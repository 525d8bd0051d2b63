package gateway_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/internal/testenv"
)

// TestCacheTooBigAtStartup checks that a replica whose cached prefixes do not fit in
// CacheMaxBytes refuses to start, saying why, instead of running out of memory later.
func TestCacheTooBigAtStartup(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	p.runIngest(t, ctx)
	for i := range 20 {
		if _, err := p.member.Put(ctx, fmt.Sprintf("k/%02d", i), strings.Repeat("v", 1000)); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := gateway.New(gateway.Options{Member: p.member, JetStream: p.js, CacheMaxBytes: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "do not fit in the keyspace cache") {
		t.Fatalf("Run = %v, want the keyspace not fitting", err)
	}
}

// TestCacheFallsBack checks what reads do when the cache cannot follow etcd: with ingest
// stopped, a linearizable read waits CacheWait for the cache, then is answered by etcd, so it
// still reflects the latest write; a serializable one is answered from the cache, stale. Once
// ingest is back, reads come from the cache again.
func TestCacheFallsBack(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	_, kill := p.runIngest(t, ctx)
	srv, cli := p.runGateway(t, ctx, func(o *gateway.Options) { o.CacheWait = 50 * time.Millisecond })
	put, err := p.member.Put(ctx, "k", "old")
	if err != nil {
		t.Fatal(err)
	}
	waitApplied(ctx, t, put.Header.Revision, srv)
	waitReady(ctx, t, srv)
	kill()
	if _, err := p.member.Put(ctx, "k", "new"); err != nil {
		t.Fatal(err)
	}

	get := func(opts ...clientv3.OpOption) string {
		t.Helper()
		resp, err := cli.Get(ctx, "k", opts...)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get: %v, %v", resp, err)
		}
		return string(resp.Kvs[0].Value)
	}
	before := srv.ReadStats()
	if got := get(); got != "new" {
		t.Errorf("linearizable read with ingest down = %q, want %q", got, "new")
	}
	if got := get(clientv3.WithSerializable()); got != "old" {
		t.Errorf("serializable read with ingest down = %q, want the cache's %q", got, "old")
	}
	after := srv.ReadStats()
	if after.FellBack != before.FellBack+1 || after.Cached != before.Cached+1 {
		t.Errorf("read stats went from %+v to %+v, want one fallback and one cached read", before, after)
	}

	p.runIngest(t, ctx)
	for get(clientv3.WithSerializable()) != "new" {
		select {
		case <-ctx.Done():
			t.Fatal("the cache did not catch up once ingest was back")
		case <-time.After(time.Millisecond):
		}
	}
	before = srv.ReadStats()
	if got := get(); got != "new" {
		t.Errorf("linearizable read with ingest back = %q, want %q", got, "new")
	}
	if after := srv.ReadStats(); after.Cached != before.Cached+1 {
		t.Errorf("read stats went from %+v to %+v, want a read from the cache", before, after)
	}
}

// TestCachePrefixes checks that only ranges within CachePrefixes are answered from the cache,
// and that the others pass through with the same results.
func TestCachePrefixes(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	p.runIngest(t, ctx)
	srv, cli := p.runGateway(t, ctx, func(o *gateway.Options) { o.CachePrefixes = []string{"in/"} })
	waitReady(ctx, t, srv) // the cache loaded: until then every read passes through
	for _, k := range []string{"in/a", "in/b", "out/a"} {
		if _, err := cli.Put(ctx, k, k); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		key    string
		opts   []clientv3.OpOption
		n      int
		cached bool
	}{
		{"in/a", nil, 1, true},
		{"in/", []clientv3.OpOption{clientv3.WithPrefix()}, 2, true},
		{"in/a", []clientv3.OpOption{clientv3.WithRange("in/b")}, 1, true},
		{"out/a", nil, 1, false},
		{"in/", []clientv3.OpOption{clientv3.WithFromKey()}, 3, false},
		{"\x00", []clientv3.OpOption{clientv3.WithFromKey()}, 3, false},
	} {
		before := srv.ReadStats()
		resp, err := cli.Get(ctx, tt.key, tt.opts...)
		if err != nil || len(resp.Kvs) != tt.n {
			t.Fatalf("get %q: %v, %v; want %d keys", tt.key, resp, err, tt.n)
		}
		after := srv.ReadStats()
		if cached := after.Cached > before.Cached; cached != tt.cached {
			t.Errorf("get %q %d options: answered from the cache %v, want %v", tt.key, len(tt.opts), cached, tt.cached)
		}
	}
}

// TestCacheOutgrowsBound checks that a keyspace that outgrows CacheMaxBytes while the replica
// runs is dropped, and that reads then pass through with correct results.
func TestCacheOutgrowsBound(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	p.runIngest(t, ctx)
	srv, cli := p.runGateway(t, ctx, func(o *gateway.Options) { o.CacheMaxBytes = 20_000 })
	waitReady(ctx, t, srv)
	var last int64
	for i := range 30 {
		resp, err := cli.Put(ctx, fmt.Sprintf("k/%02d", i), strings.Repeat("v", 1000))
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	waitApplied(ctx, t, last, srv)
	before := srv.ReadStats()
	resp, err := cli.Get(ctx, "k/", clientv3.WithPrefix(), clientv3.WithSerializable())
	if err != nil || len(resp.Kvs) != 30 {
		t.Fatalf("list: %d keys, %v; want 30", len(resp.Kvs), err)
	}
	if after := srv.ReadStats(); after.PassedThrough != before.PassedThrough+1 {
		t.Errorf("read stats went from %+v to %+v, want the list passed through", before, after)
	}
}

// TestCachePassesCredentialsThrough checks that a read carrying an auth token, or requiring a
// leader, passes through, so that etcd, not the cache, decides whether the caller may read.
func TestCachePassesCredentialsThrough(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	p.runIngest(t, ctx)
	srv, cli := p.runGateway(t, ctx, nil)
	waitReady(ctx, t, srv) // the cache loaded: the reads could be answered from it
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]context.Context{
		"token":          metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, "QkXxRMhiubWPnmrZ.21"),
		"require leader": clientv3.WithRequireLeader(ctx),
	} {
		before := srv.ReadStats()
		if _, err := cli.Get(c, "k"); err != nil {
			t.Fatal(err)
		}
		if after := srv.ReadStats(); after.PassedThrough != before.PassedThrough+1 {
			t.Errorf("%s: read stats went from %+v to %+v, want the read passed through", name, before, after)
		}
	}
}
