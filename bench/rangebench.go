package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Range reads under concurrency: GET of one key and LIST of a whole prefix, each linearizable
// (etcd's default) and serializable, every case for the same time. etcd's own CPU time per case
// shows what a caching tier takes off it.
//
// A client decoding a 10,000-key LIST spends more CPU than a server that answers it from
// memory, so on one machine the load generator, not the server, can be the limit. With Raw the
// clients read each response as bytes and only count its keys (walking the top-level fields,
// without decoding them), leaving the machine to the servers: the figures then compare what
// the servers can answer, the same way for every target.
type Range struct {
	Keys      int // keys under the listed prefix
	ValueSize int
	Clients   int // concurrent clients, one connection each, each with one request in flight
	Duration  time.Duration
	Cases     []string // subset of RangeCases; default all
	Raw       bool     // count the keys of each response without decoding it
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
	client := "clientv3"
	if s.Raw {
		client = "raw clients that count keys without decoding"
	}
	return fmt.Sprintf("%d clients (%s); GET of one key and LIST of %d keys of %d B; %s per case (%s)",
		s.Clients, client, s.Keys, s.ValueSize, s.Duration, strings.Join(s.cases(), ", "))
}

func (s Range) params() map[string]any {
	return map[string]any{"keys": s.Keys, "value_size": s.ValueSize, "clients": s.Clients,
		"duration_s": s.Duration.Seconds(), "cases": s.cases(), "raw": s.Raw}
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
	get := func(ctx context.Context, c *clientv3.Client) (int, error) {
		resp, err := c.Get(ctx, key, opts...)
		if err != nil {
			return 0, err
		}
		return len(resp.Kvs), nil
	}
	if s.Raw {
		req := clientv3.OpGet(key, opts...)
		get = func(ctx context.Context, c *clientv3.Client) (int, error) { return rawRange(ctx, c, &req) }
	}
	for i, c := range clients {
		wg.Go(func() {
			for runCtx.Err() == nil {
				start := time.Now()
				octx, ocancel := context.WithTimeout(ctx, opTimeout)
				n, err := get(octx, c)
				ocancel()
				if err == nil && n != wantKVs {
					err = fmt.Errorf("got %d keys, want %d", n, wantKVs)
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

// rawRange sends op's RangeRequest on c's connection and returns how many keys the response
// holds, counted on the wire without decoding it.
func rawRange(ctx context.Context, c *clientv3.Client, op *clientv3.Op) (int, error) {
	var kvs rawKVCount
	err := c.ActiveConnection().Invoke(ctx, "/etcdserverpb.KV/Range", rangeRequest(op), &kvs, grpc.ForceCodecV2(rawCodec{}))
	return int(kvs), err
}

// rangeRequest is the RangeRequest clientv3 sends for op.
func rangeRequest(op *clientv3.Op) *pb.RangeRequest {
	return &pb.RangeRequest{Key: op.KeyBytes(), RangeEnd: op.RangeBytes(), Revision: op.Rev(),
		Serializable: op.IsSerializable(), Limit: op.Limit()}
}

// rawKVCount is what rawCodec reads of a RangeResponse: its number of kvs.
type rawKVCount int

// rawCodec encodes requests as protobuf, and reads responses by counting the kvs field (2) of
// a RangeResponse at its top level.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	b := data.Materialize()
	n := 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
		if num == 2 && typ == protowire.BytesType {
			n++
		}
		l = protowire.ConsumeFieldValue(num, typ, b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
	}
	*v.(*rawKVCount) = rawKVCount(n)
	return nil
}
