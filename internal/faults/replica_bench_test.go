package faults

import (
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/watchgate/watchgate/internal/testenv"
)

// BenchmarkReplicaDeath measures the watch interruption a client sees when the server of its
// watch dies: a clientv3 client that knows two servers, its watch on the one that is then killed
// (connections dropped, no drain), and a put every 5 ms. Each iteration is one kill, timed from
// the kill to the first event the client receives of a put made after it: clientv3 reopens the
// watch on the other server from its last revision + 1, and every put must arrive once, in
// order. The p50 and max are over all iterations (-benchtime 20x for twenty kills).
//
// watchgate kills one of two gateway replicas; etcd, for reference, kills the follower member
// serving the watch in a 3-member cluster (the writer stays on the leader).
func BenchmarkReplicaDeath(b *testing.B) {
	b.Run("watchgate", func(b *testing.B) {
		ctx := testenv.Context(b, 10*time.Minute) // b.N is not known yet under b.Loop
		ec := startEtcdCluster(b, 1)
		ns := testenv.NATS(b)
		w := &world{t: b, ctx: ctx, etcd: ec.Endpoints(), natsURLs: ns.ClientURL(), ttl: 2 * time.Second,
			logger: slog.New(slog.DiscardHandler)}
		w.startWorker("ingest")
		for _, port := range testenv.Ports(b, 2) {
			w.replicas = append(w.replicas, w.startReplica("127.0.0.1:"+strconv.Itoa(port)))
		}
		w.waitReady()
		writer := w.etcdClient(0)
		b.Cleanup(func() { writer.Close() })
		measureDeath(ctx, b, writer, func(i int) (victim, other string, kill, restart func()) {
			v, o := w.replicas[i%2], w.replicas[(i+1)%2]
			return v.addr, o.addr, v.kill, func() {
				restarted := w.startReplica(v.addr)
				w.mu.Lock()
				w.replicas[i%2] = restarted
				w.mu.Unlock()
				w.waitReady()
			}
		})
	})
	b.Run("etcd", func(b *testing.B) {
		ctx := testenv.Context(b, 10*time.Minute)
		ec := startEtcdCluster(b, 3)
		eps := ec.Endpoints()
		at := ec.Leader(b)
		writer, err := clientv3.New(clientv3.Config{Endpoints: eps[at : at+1], DialTimeout: 10 * time.Second,
			Logger: zap.NewNop()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { writer.Close() })
		// Clients reach the members through forwarders, whose connections end at once when the
		// member is killed, as a crashed process's would (an embedded member's own close waits
		// for its streams for a request timeout first).
		fwds := make([]*forwarder, 3)
		for i, port := range testenv.Ports(b, 3) {
			fwds[i] = &forwarder{addr: "127.0.0.1:" + strconv.Itoa(port), to: eps[i][len("http://"):]}
			fwds[i].listen(b)
			b.Cleanup(fwds[i].crash)
		}
		measureDeath(ctx, b, writer, func(i int) (victim, other string, kill, restart func()) {
			v, o := (at+1+i%2)%3, (at+2-i%2)%3 // the two members the writer is not on, in turn
			stopped := make(chan struct{})
			return fwds[v].addr, fwds[o].addr, func() {
					fwds[v].crash()
					go func() { defer close(stopped); ec.Kill(b, v) }()
				}, func() {
					<-stopped
					ec.Restart(b, v)
					fwds[v].listen(b)
				}
		})
	})
}

// forwarder passes TCP connections from addr to another address, and can drop them all at once.
type forwarder struct {
	addr, to string

	mu    sync.Mutex
	lis   net.Listener // guarded by mu; nil while crashed
	conns []net.Conn   // guarded by mu
}

// listen starts accepting on addr again.
func (f *forwarder) listen(t testing.TB) {
	t.Helper()
	lis, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.lis = lis
	f.mu.Unlock()
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", f.to)
			if err != nil {
				in.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, in, out)
			f.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
}

// crash closes the listener and every connection.
func (f *forwarder) crash() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lis != nil {
		f.lis.Close()
		f.lis = nil
	}
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// measureDeath runs the kills of BenchmarkReplicaDeath. servers gives, for iteration i, the
// address serving the watch, the address it may move to, and how to kill and restart the first.
func measureDeath(ctx context.Context, b *testing.B, writer *clientv3.Client,
	servers func(i int) (victim, other string, kill, restart func())) {
	// The beat: a put of a counter every 5 ms.
	var lastPut atomic.Int64 // the last value put
	wctx, stopWriting := context.WithCancel(ctx)
	writing := make(chan error, 1)
	go func() {
		tick := time.NewTicker(5 * time.Millisecond) // a steady load, not timing logic
		defer tick.Stop()
		for n := int64(1); ; n++ {
			select {
			case <-wctx.Done():
				writing <- nil
				return
			case <-tick.C:
			}
			if _, err := writer.Put(wctx, "beat", strconv.FormatInt(n, 10)); err != nil {
				if wctx.Err() == nil {
					writing <- err
				} else {
					writing <- nil
				}
				return
			}
			lastPut.Store(n)
		}
	}()

	var took []time.Duration
	for i := 0; b.Loop(); i++ {
		victim, other, kill, restart := servers(i)
		// A client whose watch is on the victim, and which knows the other server once it is.
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + victim},
			DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			b.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		wch := c.Watch(cctx, "beat", clientv3.WithCreatedNotify())
		if resp := <-wch; !resp.Created {
			b.Fatalf("watch not created: %v", resp.Err())
		}
		c.SetEndpoints("http://"+victim, "http://"+other)
		var last int64
		next := func() (int64, time.Time) {
			b.Helper()
			for {
				select {
				case resp, ok := <-wch:
					if !ok || resp.Err() != nil || resp.Canceled {
						b.Fatalf("watch ended: %v", resp.Err())
					}
					for _, ev := range resp.Events {
						v, _ := strconv.ParseInt(string(ev.Kv.Value), 10, 64)
						if last != 0 && v != last+1 {
							b.Fatalf("after value %d the watch delivered %d: a put was missed or repeated", last, v)
						}
						last = v
					}
					if len(resp.Events) > 0 {
						return last, time.Now()
					}
				case err := <-writing:
					b.Fatalf("the writer stopped: %v", err)
				case <-time.After(30 * time.Second): // a bound on a hang, not timing logic
					b.Fatalf("no event for 30s after value %d", last)
				}
			}
		}
		next()
		killed := time.Now()
		kill()
		// Events put before the victim's connections closed may already be on their way; the
		// interruption ends with the first put made after it, which only the other server can
		// deliver.
		after := lastPut.Load()
		for {
			if v, at := next(); v > after {
				took = append(took, at.Sub(killed))
				break
			}
		}
		// Let the watch catch up with the puts made meanwhile: one target, as the beat goes on.
		for target := lastPut.Load(); last < target; {
			next()
		}
		cancel()
		c.Close()
		restart()
	}
	stopWriting()
	if err := <-writing; err != nil {
		b.Fatal(err)
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(0, "ns/op")
	b.Logf("%d kills: first event after the kill %v", len(took), took)
}
