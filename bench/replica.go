package bench

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/zap"

	"github.com/watchgate/watchgate/gateway"
)

// The gateway role: one more replica of a watchgate tier, in a process of its own, for
// figures of one replica alone (what its start costs, what its caches take).

// startGateway runs a gateway replica in front of spec.Upstream, following the event log at
// spec.NATS, as `watchgate gateway` runs one, and returns once it is ready. gauges reads the
// replica's integer gauges.
func startGateway(ctx context.Context, spec childSpec) (endpoint string, gauges func(context.Context) map[string]int64, closeFn func(), err error) {
	var closers []func()
	closeAll := func() {
		for _, c := range slices.Backward(closers) {
			c()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	member, err := clientv3.New(clientv3.Config{Endpoints: []string{spec.Upstream}, DialTimeout: 5 * time.Second,
		Logger: zap.NewNop(), MaxUnaryRetries: 1}) // see gateway.Options.Member
	if err != nil {
		return "", nil, nil, err
	}
	closers = append(closers, func() { member.Close() })
	nc, err := nats.Connect(spec.NATS, nats.MaxReconnects(-1))
	if err != nil {
		return "", nil, nil, err
	}
	closers = append(closers, nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		return "", nil, nil, err
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	closers = append(closers, func() { _ = mp.Shutdown(context.Background()) })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, nil, err
	}
	endpoint = "http://" + lis.Addr().String()
	srv, err := gateway.New(gateway.Options{
		Member: member, JetStream: js, AdvertiseClientURL: endpoint, CacheMaxBytes: spec.CacheMaxBytes,
		Meter: mp.Meter("watchgate"), Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)), // into the child's log
	})
	if err != nil {
		lis.Close()
		return "", nil, nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	failed := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() { failed <- srv.Run(runCtx) })
	g := srv.NewGRPCServer()
	wg.Go(func() { _ = g.Serve(lis) })
	closers = append(closers, func() { g.Stop(); cancel(); wg.Wait() })

	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !srv.Ready() {
		select {
		case err := <-failed:
			if err == nil {
				err = errors.New("gateway stopped before it was ready")
			}
			return "", nil, nil, err
		case <-ctx.Done():
			return "", nil, nil, ctx.Err()
		case <-t.C:
		}
	}
	return endpoint, func(ctx context.Context) map[string]int64 { return int64Gauges(ctx, reader) }, closeAll, nil
}

// int64Gauges collects reader's integer gauges, each summed over its attributes.
func int64Gauges(ctx context.Context, reader sdkmetric.Reader) map[string]int64 {
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		return nil
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if g, ok := m.Data.(metricdata.Gauge[int64]); ok {
				for _, dp := range g.DataPoints {
					out[m.Name] += dp.Value
				}
			}
		}
	}
	return out
}
