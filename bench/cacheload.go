package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/prometheus/procfs"

	"github.com/watchgate/watchgate/eventlog"
)

// CacheLoad measures what the gateway's keyspace cache costs a replica: how long a replica
// takes to start when etcd already holds Keys keys (it reads them all from etcd before it is
// ready), and the heap they take. The keys are written straight to etcd and the event
// log holds every revision before a fresh replica starts, once with the cache disabled and once
// with it; each is timed from its process's start until it is ready, and its heap is read after
// a GC. The difference of the two heaps, over Keys, is the cache's cost per key.
//
// Only the watchgate target has such a cache: the scenario measures nothing on the others.
type CacheLoad struct {
	Keys      int
	ValueSize int
}

// DefaultCacheLoad is the default size: 100,000 keys of 256 B.
var DefaultCacheLoad = CacheLoad{Keys: 100000, ValueSize: 256}

func (s CacheLoad) Name() string { return "cache-load" }

func (s CacheLoad) title() string {
	return fmt.Sprintf("watchgate only (etcd and the gRPC proxy have no keyspace cache): a gateway replica starting on %d keys of %d B, with and without its keyspace cache",
		s.Keys, s.ValueSize)
}

func (s CacheLoad) params() map[string]any {
	return map[string]any{"keys": s.Keys, "value_size": s.ValueSize}
}

func (s CacheLoad) validate() error {
	if s.Keys < 1 || s.ValueSize < 0 {
		return errors.New("cache-load: keys must be positive and value size not negative")
	}
	return nil
}

func (s CacheLoad) columns() []Column {
	return []Column{
		{Key: "cached_keys", Header: "cached keys", Digits: 0},
		{Key: "ready_s", Header: "ready s", Digits: 2},
		{Key: "ready_nocache_s", Header: "ready s (no cache)", Digits: 2},
		{Key: "gateway_cpu_s", Header: "gateway CPU s", Digits: 2},
		{Key: "etcd_cpu_s", Header: "etcd CPU s", Digits: 2},
		{Key: "heap_mib", Header: "heap MiB", Digits: 1},
		{Key: "heap_nocache_mib", Header: "heap MiB (no cache)", Digits: 1},
		{Key: "heap_per_key_b", Header: "heap B/key", Digits: 0},
		{Key: "estimate_per_key_b", Header: "estimate B/key", Digits: 0},
		{Key: "raw_per_key_b", Header: "raw B/key", Digits: 0},
		{Key: "heap_over_raw", Header: "heap/raw", Digits: 2},
	}
}

const cacheLoadPrefix = "bench/cache-load/"

// The gateway's gauges of its keyspace cache (gateway/metrics.go).
const (
	gaugeCacheKeys  = "watchgate.gateway.cache_keys"
	gaugeCacheBytes = "watchgate.gateway.cache_bytes"
)

func (s CacheLoad) run(ctx context.Context, r *runner, d *deployment) []Row {
	if d.name != TargetWatchgate {
		return nil // nothing to measure: see the title
	}
	row := Row{Target: d.name, Values: map[string]float64{}}
	finish(&row, s.measure(ctx, r, d, row.Values))
	return []Row{row}
}

func (s CacheLoad) measure(ctx context.Context, r *runner, d *deployment, v map[string]float64) error {
	if d.etcd == nil {
		return errors.New("cache-load starts replicas of its own: it cannot measure a running server (--endpoints)")
	}
	writers, err := dial(ctx, d.etcdEndpoint(), 1)
	if err != nil {
		return err
	}
	defer closeAll(writers)
	r.progressf("writing %d keys to etcd", s.Keys)
	first, last, err := writeKeys(ctx, writers[0], cacheLoadPrefix, s.Keys, s.Keys, s.ValueSize, 64)
	if err != nil {
		return err
	}
	if err := d.startTier(ctx); err != nil {
		return err
	}
	if err := awaitLogged(ctx, r, d, first, last); err != nil {
		return err
	}

	off, err := s.startReplica(ctx, r, d, "no-cache", -1)
	if err != nil {
		return err
	}
	v["ready_nocache_s"] = off.ready.Seconds()
	v["heap_nocache_mib"] = float64(off.heap.HeapInuse) / (1 << 20)
	if off.cpu >= 0 {
		v["gateway_cpu_nocache_s"], v["etcd_cpu_nocache_s"] = off.cpu, off.etcdCPU
	}
	on, err := s.startReplica(ctx, r, d, "cache", 0)
	if err != nil {
		return err
	}
	v["ready_s"] = on.ready.Seconds()
	v["heap_mib"] = float64(on.heap.HeapInuse) / (1 << 20)
	if on.cpu >= 0 {
		v["gateway_cpu_s"], v["etcd_cpu_s"] = on.cpu, on.etcdCPU
	}
	keys := on.heap.Gauges[gaugeCacheKeys]
	v["cached_keys"] = float64(keys)
	raw := float64(len(fmt.Sprintf("%s%08d", cacheLoadPrefix, s.Keys-1)) + max(s.ValueSize, stampSize))
	perKey := (float64(on.heap.HeapInuse) - float64(off.heap.HeapInuse)) / float64(s.Keys)
	v["raw_per_key_b"] = raw
	v["heap_per_key_b"] = perKey
	v["heap_over_raw"] = perKey / raw
	if b, ok := on.heap.Gauges[gaugeCacheBytes]; ok {
		v["estimate_per_key_b"] = float64(b) / float64(s.Keys)
	}
	if keys != int64(s.Keys) {
		return fmt.Errorf("the replica's cache holds %d keys, want %d", keys, s.Keys)
	}
	return nil
}

// awaitLogged waits until the watchgate tier's event log holds every revision from first to
// last.
func awaitLogged(ctx context.Context, r *runner, d *deployment, first, last int64) error {
	log, closeLog, err := bindLog(ctx, d.tier.ready.NATS)
	if err != nil {
		return err
	}
	defer closeLog()
	var b eventlog.Bounds
	var berr error
	err = r.await(ctx, "event log revisions", func() int64 {
		if b, berr = log.Bounds(ctx); berr != nil {
			return 0
		}
		return b.Last
	}, last)
	switch {
	case err != nil && berr != nil:
		return fmt.Errorf("%w (last error: %w)", err, berr)
	case err != nil:
		return err
	case b.First > first:
		return fmt.Errorf("the event log starts at revision %d, after the keys' first write at %d", b.First, first)
	}
	return nil
}

// replicaStart is what starting one replica cost.
type replicaStart struct {
	ready        time.Duration // from starting its process until it was ready
	cpu, etcdCPU float64       // CPU seconds the replica used until then, and etcd meanwhile; -1 if unknown
	heap         heapFigures   // after a GC, once ready
}

// startReplica starts a replica with the given CacheMaxBytes, measures its start and stops it.
// A replica not ready within the stall timeout plus a millisecond per key is reported stalled.
func (s CacheLoad) startReplica(ctx context.Context, r *runner, d *deployment, kase string, cacheMaxBytes int64) (replicaStart, error) {
	res := replicaStart{cpu: -1}
	var profile string
	if r.cfg.ProfileDir != "" {
		profile = filepath.Join(r.cfg.ProfileDir, r.scenario+"-"+r.target+"-"+kase+"-"+roleGateway+".pprof")
	}
	bound := r.cfg.StallTimeout + time.Duration(s.Keys)*time.Millisecond
	sctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	r.progressf("starting a replica (%s)", kase)
	etcd0, etcdKnown := cpuSeconds(d.etcd)
	profiled := r.profile(ctx, d, kase)
	start := time.Now()
	c, err := d.startReplica(sctx, "replica-"+kase, cacheMaxBytes, profile)
	res.ready = time.Since(start)
	profiled()
	if err != nil {
		if sctx.Err() != nil && ctx.Err() == nil {
			return res, fmt.Errorf("%w: the replica (%s) was not ready after %s: %w", errStalled, kase, bound, err)
		}
		return res, err
	}
	defer c.stop()
	etcd1, _ := cpuSeconds(d.etcd)
	if cpu, ok := cpuSeconds(c); ok && etcdKnown {
		res.cpu, res.etcdCPU = cpu, etcd1-etcd0
	}
	if res.heap, err = c.heap(ctx); err != nil {
		return res, fmt.Errorf("heap of the replica (%s): %w", kase, err)
	}
	return res, nil
}

// cpuSeconds is the CPU time c's process has used so far, if the operating system tells.
func cpuSeconds(c *child) (float64, bool) {
	p, err := procfs.NewProc(c.pid())
	if err != nil {
		return 0, false
	}
	st, err := p.Stat()
	if err != nil {
		return 0, false
	}
	return st.CPUTime(), true
}
