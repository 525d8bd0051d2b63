package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Range reads under concurrency: GET of one key and LIST of a whole prefix, each linearizable
// (etcd's default) and serializable, every case for the same time. etcd's own CPU time per case
// shows what a caching tier takes off it.
type Range struct {
	Keys      int // keys under the listed prefix
	ValueSize int
	Clients   int // concurrent clients, one connection each, each with one request in flight
	Duration  time.Duration
	Cases     []string // subset of RangeCases; default all
}

// The range cases.
const (
	CaseGetLinearizable  = "get-linearizable"
	CaseGetSerializable  = "get-serializable"
	CaseListLinearizable = "list-linearizable"
	CaseListSerializable = "list-serializable"
)

// RangeCases are the cases of the range scenario, in order.
var RangeCases = []string{CaseGetLinearizable, CaseGetSerializable, CaseListLinearizable, CaseListSerializable}

// DefaultRange is the default size: 16 clients, a 1,000-key prefix, 5 s per case.
var DefaultRange = Range{Keys: 1000, ValueSize: 256, Clients: 16, Duration: 5 * time.Second}

func (s Range) Name() string { return "range" }

func (s Range) cases() []string {
	if len(s.Cases) == 0 {
		return RangeCases
	}
	return s.Cases
}

func (s Range) title() string {
	return fmt.Sprintf("%d clients; GET of one key and LIST of %d keys of %d B; %s per case (%s)",
		s.Clients, s.Keys, s.ValueSize, s.Duration, strings.Join(s.cases(), ", "))
}

func (s Range) params() map[string]any {
	return map[string]any{"keys": s.Keys, "value_size": s.ValueSize, "clients": s.Clients,
		"duration_s": s.Duration.Seconds(), "cases": s.cases()}
}

func (s Range) validate() error {
	if s.Keys < 1 || s.Clients < 1 || s.Duration <= 0 {
		return errors.New("range: keys, clients and duration must be positive")
	}
	for _, c := range s.Cases {
		if !slices.Contains(RangeCases, c) {
			return fmt.Errorf("range: unknown case %q (want one of %s)", c, strings.Join(RangeCases, ", "))
		}
	}
	return nil
}

func (s Range) columns() []Column {
	return append([]Column{
		{Key: "ops_per_s", Header: "ops/s", Digits: 0, Ratio: true},
		{Key: "latency_p50_ms", Header: "p50 ms", Digits: 2, Ratio: true},
		{Key: "latency_p99_ms", Header: "p99 ms", Digits: 2, Ratio: true},
		{Key: "errors", Header: "errors", Digits: 0},
	}, usageColumns()...)
}

const rangePrefix = "bench/range/"

func (s Range) run(ctx context.Context, r *runner, d *deployment) []Row {
	if err := d.startTier(ctx); err != nil {
		return failed(d.name, err)
	}
	clients, err := dial(ctx, d.endpoint, s.Clients)
	if err != nil {
		return failed(d.name, err)
	}
	defer closeAll(clients)
	if _, _, err := writeKeys(ctx, clients[0], rangePrefix, s.Keys, s.Keys, s.ValueSize, 16); err != nil {
		return failed(d.name, err)
	}
	var rows []Row
	for _, c := range s.cases() {
		row := Row{Target: d.name, Case: c, Values: map[string]float64{}}
		finish(&row, s.measure(ctx, r, d, clients, c, row.Values))
		rows = append(rows, row)
	}
	return rows
}

func (s Range) measure(ctx context.Context, r *runner, d *deployment, clients []*clientv3.Client, kase string, v map[string]float64) error {
	key, opts := rangePrefix+"00000000", []clientv3.OpOption(nil)
	if strings.HasPrefix(kase, "list") {
		key, opts = rangePrefix, append(opts, clientv3.WithPrefix())
	}
	wantKVs := 1
	if strings.HasPrefix(kase, "list") {
		wantKVs = s.Keys
	}
	if strings.HasSuffix(kase, "serializable") {
		opts = append(opts, clientv3.WithSerializable())
	}
	lat := newLatencies()
	var ops, errs counter
	var firstErr error
	var once sync.Once
	m := startMeter(d)
	profiled := r.profile(ctx, d, kase)
	runCtx, cancel := context.WithTimeout(ctx, s.Duration)
	defer cancel()
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			for runCtx.Err() == nil {
				start := time.Now()
				octx, ocancel := context.WithTimeout(ctx, opTimeout)
				resp, err := c.Get(octx, key, opts...)
				ocancel()
				if err == nil && len(resp.Kvs) != wantKVs {
					err = fmt.Errorf("got %d keys, want %d", len(resp.Kvs), wantKVs)
				}
				if err != nil {
					errs.Add(1)
					once.Do(func() { firstErr = err })
					continue
				}
				lat.record(i, time.Since(start))
				ops.Add(1)
				r.progressf("%s: %d ops", kase, ops.get())
			}
		})
	}
	wg.Wait()
	profiled()
	u := m.stop()
	v["ops"] = float64(ops.get())
	v["ops_per_s"] = perSecond(ops.get(), u.wall)
	v["errors"] = float64(errs.get())
	lat.quantilesMs(v, "latency", false)
	putUsage(v, u)
	if firstErr != nil {
		return fmt.Errorf("%d requests failed, first: %w", errs.get(), firstErr)
	}
	return nil
}
