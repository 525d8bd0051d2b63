package gateway_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/watchgate/watchgate/gateway"
	"github.com/watchgate/watchgate/internal/testenv"
)

// Tests of the read path's consistency: linearizable reads through any replica reflect every
// write that completed before them, wherever it was made; no read, linearizable or
// serializable, sees part of a transaction; writes that bypass the gateways reach their
// caches; and identical lists are answered from the response cache without reaching etcd.

// twoReplicas runs a deployment with two gateway replicas, ready, and returns its parts and
// each replica with a client of it.
func twoReplicas(t *testing.T, ctx context.Context) (p *parts, srvA *gateway.Server, a *clientv3.Client, srvB *gateway.Server, b *clientv3.Client) {
	t.Helper()
	p = newParts(t, ctx)
	p.runIngest(t, ctx)
	srvA, a = p.runGateway(t, ctx, nil)
	srvB, b = p.runGateway(t, ctx, nil)
	waitReady(ctx, t, srvA, srvB)
	return p, srvA, a, srvB, b
}

// TestLinearizableAcrossReplicas writes through one replica (or etcd directly) and at once
// reads linearizably through another, thousands of times: every read sees its write.
func TestLinearizableAcrossReplicas(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	p, srvA, a, srvB, b := twoReplicas(t, ctx)

	type path struct {
		name        string
		write, read *clientv3.Client
		txn         bool
	}
	paths := []path{
		{name: "put via A, get via B", write: a, read: b},
		{name: "put via B, get via A", write: b, read: a},
		{name: "txn via A, get via B", write: a, read: b, txn: true},
		{name: "put on etcd, get via A", write: p.member, read: a},
		{name: "put on etcd, get via B", write: p.member, read: b},
		{name: "txn on etcd, get via A", write: p.member, read: a, txn: true},
	}
	const pairs, keys = 2000, 4
	start := time.Now()
	for i := range pairs {
		pa := paths[i%len(paths)]
		key, val := fmt.Sprintf("lin/k%d", i%keys), fmt.Sprintf("v%d", i)
		var rev int64
		if pa.txn {
			other := fmt.Sprintf("lin/t%d", i%keys)
			resp, err := pa.write.Txn(ctx).Then(clientv3.OpPut(key, val), clientv3.OpPut(other, val)).Commit()
			if err != nil {
				t.Fatalf("pair %d (%s): txn: %v", i, pa.name, err)
			}
			rev = resp.Header.Revision
			got, err := pa.read.Get(ctx, other)
			if err != nil {
				t.Fatalf("pair %d (%s): get %s: %v", i, pa.name, other, err)
			}
			if len(got.Kvs) != 1 || string(got.Kvs[0].Value) != val || got.Kvs[0].ModRevision != rev {
				t.Fatalf("pair %d (%s): get %s after the txn at revision %d: %v", i, pa.name, other, rev, got.Kvs)
			}
		} else {
			resp, err := pa.write.Put(ctx, key, val)
			if err != nil {
				t.Fatalf("pair %d (%s): put: %v", i, pa.name, err)
			}
			rev = resp.Header.Revision
		}
		got, err := pa.read.Get(ctx, key)
		if err != nil {
			t.Fatalf("pair %d (%s): get: %v", i, pa.name, err)
		}
		if len(got.Kvs) != 1 || string(got.Kvs[0].Value) != val || got.Kvs[0].ModRevision != rev {
			t.Fatalf("pair %d (%s): get %s after the write of %q at revision %d: %v", i, pa.name, key, val, rev, got.Kvs)
		}
		if got.Header.Revision < rev {
			t.Fatalf("pair %d (%s): read at revision %d, after the write at %d", i, pa.name, got.Header.Revision, rev)
		}
	}
	t.Logf("%d write-read pairs in %v", pairs, time.Since(start))
	for name, s := range map[string]*gateway.Server{"A": srvA, "B": srvB} {
		st := s.ReadStats()
		t.Logf("replica %s: %+v", name, st)
		if st.Cached == 0 {
			t.Errorf("replica %s answered no read from its cache: %+v", name, st)
		}
	}
}

// TestNoTornTxn: a writer commits txns that put one stamp to every key of a prefix, or delete
// them all; readers listing the prefix through both replicas, linearizably and serializably,
// see all the keys with one stamp, or none of them. Linearizable reads of one reader never go
// back in revision.
func TestNoTornTxn(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	p, srvA, a, srvB, b := twoReplicas(t, ctx)

	const n, txns, maxReads = 6, 500, 20000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("torn/%d", i)
	}
	// Keys beside the prefix, written in the same txns, must never show up in its lists.
	beside := []string{"torn", "torn0", "tor/n"}

	g, gctx := errgroup.WithContext(ctx)
	written := make(chan struct{})
	g.Go(func() error {
		defer close(written)
		writers := []*clientv3.Client{p.member, a, b}
		for i := range txns {
			var ops []clientv3.Op
			if i%5 == 4 {
				for _, k := range keys {
					ops = append(ops, clientv3.OpDelete(k))
				}
			} else {
				for _, k := range keys {
					ops = append(ops, clientv3.OpPut(k, fmt.Sprintf("stamp-%d", i)))
				}
				ops = append(ops, clientv3.OpPut(beside[i%len(beside)], "x"))
			}
			if _, err := writers[i%len(writers)].Txn(gctx).Then(ops...).Commit(); err != nil {
				return fmt.Errorf("txn %d: %w", i, err)
			}
		}
		return nil
	})
	type reader struct {
		name         string
		c            *clientv3.Client
		serializable bool
		reads, full  int
	}
	readers := []*reader{{name: "A linearizable", c: a}, {name: "A serializable", c: a, serializable: true},
		{name: "B linearizable", c: b}, {name: "B serializable", c: b, serializable: true}}
	for _, r := range readers {
		g.Go(func() error {
			opts := []clientv3.OpOption{clientv3.WithPrefix()}
			if r.serializable {
				opts = append(opts, clientv3.WithSerializable())
			}
			var lastRev int64
			for r.reads < maxReads {
				select {
				case <-written:
					return nil
				default:
				}
				resp, err := r.c.Get(gctx, "torn/", opts...)
				if err != nil {
					return fmt.Errorf("%s: %w", r.name, err)
				}
				r.reads++
				if err := untorn(resp, n); err != nil {
					return fmt.Errorf("%s: read %d at revision %d: %w", r.name, r.reads, resp.Header.Revision, err)
				}
				if len(resp.Kvs) > 0 {
					r.full++
				}
				if !r.serializable {
					if resp.Header.Revision < lastRev {
						return fmt.Errorf("%s: read at revision %d after a read at %d", r.name, resp.Header.Revision, lastRev)
					}
					lastRev = resp.Header.Revision
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, r := range readers {
		t.Logf("%s: %d reads, %d with the keys", r.name, r.reads, r.full)
		if r.full == 0 {
			t.Errorf("%s never saw the keys in %d reads", r.name, r.reads)
		}
	}
	for name, s := range map[string]*gateway.Server{"A": srvA, "B": srvB} {
		if st := s.ReadStats(); st.Cached == 0 {
			t.Errorf("replica %s answered no read from its cache: %+v", name, st)
		}
	}
}

// untorn checks a list of the prefix: all n keys with one stamp and one revision, or none.
func untorn(resp *clientv3.GetResponse, n int) error {
	if resp.Count != int64(len(resp.Kvs)) || resp.More {
		return fmt.Errorf("count %d, more %v, %d kvs", resp.Count, resp.More, len(resp.Kvs))
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	if len(resp.Kvs) != n {
		return fmt.Errorf("torn: %d of %d keys: %v", len(resp.Kvs), n, resp.Kvs)
	}
	first := resp.Kvs[0]
	for _, kv := range resp.Kvs[1:] {
		if string(kv.Value) != string(first.Value) || kv.ModRevision != first.ModRevision ||
			kv.CreateRevision != first.CreateRevision || kv.Version != first.Version {
			return fmt.Errorf("torn: %v", resp.Kvs)
		}
	}
	if first.ModRevision > resp.Header.Revision {
		return fmt.Errorf("kvs at revision %d in a response at %d", first.ModRevision, resp.Header.Revision)
	}
	return nil
}

// TestDirectWritesReachCache: writes made on etcd directly, which no gateway sees pass, are in
// a linearizable read through the gateway at once, and in a serializable one as soon as the
// replica has applied their revision.
func TestDirectWritesReachCache(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	p.runIngest(t, ctx)
	srv, c := p.runGateway(t, ctx, nil)
	waitReady(ctx, t, srv)

	// expect requires a read of key to hold val (absent if "") written at revision rev.
	expect := func(what string, resp *clientv3.GetResponse, err error, key, val string, rev int64) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: get %s: %v", what, key, err)
		}
		if resp.Header.Revision < rev {
			t.Fatalf("%s: read at revision %d, before the write at %d", what, resp.Header.Revision, rev)
		}
		if val == "" {
			if len(resp.Kvs) != 0 {
				t.Fatalf("%s: %s deleted at revision %d, read %v", what, key, rev, resp.Kvs)
			}
			return
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != val || resp.Kvs[0].ModRevision != rev {
			t.Fatalf("%s: %s put to %q at revision %d, read %v", what, key, val, rev, resp.Kvs)
		}
	}
	for i := range 60 {
		key := fmt.Sprintf("direct/%d", i%3)
		// A put, then a linearizable read.
		val := fmt.Sprintf("lin-%d", i)
		put, err := p.member.Put(ctx, key, val)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Get(ctx, key)
		expect("linearizable after a put", resp, err, key, val, put.Header.Revision)

		// A put (or a delete, or a txn), then a serializable read once the replica applied it.
		var rev int64
		switch val = fmt.Sprintf("ser-%d", i); i % 3 {
		case 0:
			r, err := p.member.Put(ctx, key, val)
			if err != nil {
				t.Fatal(err)
			}
			rev = r.Header.Revision
		case 1:
			r, err := p.member.Delete(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			rev, val = r.Header.Revision, ""
		case 2:
			r, err := p.member.Txn(ctx).Then(clientv3.OpPut(key, val), clientv3.OpPut("direct/txn", val)).Commit()
			if err != nil {
				t.Fatal(err)
			}
			rev = r.Header.Revision
		}
		waitApplied(ctx, t, rev, srv)
		resp, err = c.Get(ctx, key, clientv3.WithSerializable())
		expect("serializable once applied", resp, err, key, val, rev)

		// A delete, then a linearizable list.
		del, err := p.member.Delete(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		resp, err = c.Get(ctx, key, clientv3.WithPrefix())
		expect("linearizable list after a delete", resp, err, key, "", del.Header.Revision)
	}
	if st := srv.ReadStats(); st.Cached == 0 {
		t.Errorf("the replica answered no read from its cache: %+v", st)
	}
}

// etcdRanges is how many Range calls the embedded etcd servers of this process have handled,
// from etcd's gRPC metrics in the default Prometheus registry.
func etcdRanges(t *testing.T) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum, found := 0.0, false
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_handled_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["grpc_service"] == "etcdserverpb.KV" && labels["grpc_method"] == "Range" {
				sum += m.GetCounter().GetValue()
				found = true
			}
		}
	}
	if !found {
		t.Fatal(`no grpc_server_handled_total{grpc_service="etcdserverpb.KV",grpc_method="Range"} in the default registry`)
	}
	return sum
}

// TestIdenticalListsServedFromResponseCache lists one prefix through the gateway in a tight
// loop: serializable lists never reach etcd, and linearizable ones reach it only as the
// replica's shared revision probes, both answered by reusing one encoded response.
func TestIdenticalListsServedFromResponseCache(t *testing.T) {
	ctx := testenv.Context(t, time.Minute)
	p := newParts(t, ctx)
	p.runIngest(t, ctx)
	// A serializable read is answered from the cache only while the replica knows the
	// member's auth is off, which every probe (at least once per LeaderCheckInterval)
	// confirms. A long interval keeps the loop free of those probes.
	srv, c := p.runGateway(t, ctx, func(o *gateway.Options) { o.LeaderCheckInterval = time.Minute })
	var rev int64
	for i := range 20 {
		r, err := p.member.Put(ctx, fmt.Sprintf("lists/%02d", i), fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		rev = r.Header.Revision
	}
	if _, err := p.member.Put(ctx, "lists0", "beside"); err != nil {
		t.Fatal(err)
	}
	waitReady(ctx, t, srv)
	waitApplied(ctx, t, rev+1, srv)

	// The metric counts this etcd's Ranges.
	before := etcdRanges(t)
	if _, err := p.member.Get(ctx, "lists/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	if d := etcdRanges(t) - before; d != 1 {
		t.Fatalf("one Range on etcd counted %v times", d)
	}

	const loop = 200
	for _, mode := range []struct {
		name string
		opts []clientv3.OpOption
	}{
		{name: "serializable", opts: []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSerializable()}},
		{name: "linearizable", opts: []clientv3.OpOption{clientv3.WithPrefix()}},
	} {
		want, err := c.Get(ctx, "lists/", mode.opts...) // computes the response once
		if err != nil {
			t.Fatal(err)
		}
		if len(want.Kvs) != 20 || want.Header.Revision != rev+1 {
			t.Fatalf("%s: %d kvs at revision %d, want 20 at %d", mode.name, len(want.Kvs), want.Header.Revision, rev+1)
		}
		ranges0, stats0 := etcdRanges(t), srv.ReadStats()
		for i := range loop {
			got, err := c.Get(ctx, "lists/", mode.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := gocmp.Diff([]*mvccpb.KeyValue(want.Kvs), []*mvccpb.KeyValue(got.Kvs), protocmp.Transform()); diff != "" ||
				got.Count != want.Count || got.More || got.Header.Revision != want.Header.Revision {
				t.Fatalf("%s list %d: count %d more %v revision %d, want count %d at %d; kvs (-want +got):\n%s",
					mode.name, i, got.Count, got.More, got.Header.Revision, want.Count, want.Header.Revision, diff)
			}
		}
		ranges, stats := etcdRanges(t)-ranges0, srv.ReadStats()
		probes, responses := stats.Probes-stats0.Probes, stats.Responses-stats0.Responses
		t.Logf("%s: %d lists: etcd handled %v Ranges; replica probes +%d, reused responses +%d, stats %+v",
			mode.name, loop, ranges, probes, responses, stats)
		if mode.name == "serializable" && ranges != 0 {
			t.Errorf("serializable: %d identical lists reached etcd %v times, want 0", loop, ranges)
		}
		if ranges > float64(probes) {
			t.Errorf("%s: etcd handled %v Ranges during %d identical lists, more than the replica's %d probes",
				mode.name, ranges, loop, probes)
		}
		if responses < loop*9/10 {
			t.Errorf("%s: %d of %d identical lists reused a cached response", mode.name, responses, loop)
		}
	}
}
