package gateway

import (
	"context"
	"sync/atomic"

	"go.opentelemetry.io/otel/metric"
)

// metrics are a gateway replica's instruments.
type metrics struct {
	watchers  metric.Int64UpDownCounter
	streams   metric.Int64UpDownCounter
	revisions metric.Int64Counter
	eventsOut metric.Int64Counter
	lagging   metric.Int64Counter
	corrupt   metric.Int64Counter

	reads      metric.Int64Counter     // Range requests, by how they were answered
	probes     metric.Int64Counter     // linearizable revision probes sent to the member
	readWait   metric.Float64Histogram // time linearizable reads waited for a probe and the cache
	cacheDrops metric.Int64Counter     // keyspace caches dropped for a rebuild

	lag atomic.Int64 // revisions in the log after the last one applied
}

func newMetrics(meter metric.Meter) (*metrics, error) {
	m := &metrics{}
	var err error
	if m.watchers, err = meter.Int64UpDownCounter("watchgate.gateway.watchers",
		metric.WithDescription("Client watchers open on this replica.")); err != nil {
		return nil, err
	}
	if m.streams, err = meter.Int64UpDownCounter("watchgate.gateway.watch_streams",
		metric.WithDescription("Client watch streams open on this replica.")); err != nil {
		return nil, err
	}
	if m.revisions, err = meter.Int64Counter("watchgate.gateway.revisions_in",
		metric.WithDescription("Revisions consumed from the event log.")); err != nil {
		return nil, err
	}
	if m.eventsOut, err = meter.Int64Counter("watchgate.gateway.events_out",
		metric.WithDescription("Events sent to client watchers.")); err != nil {
		return nil, err
	}
	if m.lagging, err = meter.Int64Counter("watchgate.gateway.watchers_lagged",
		metric.WithDescription("Times a watcher's stream was full and it fell back to catching up from history.")); err != nil {
		return nil, err
	}
	if m.corrupt, err = meter.Int64Counter("watchgate.gateway.log_rejected",
		metric.WithDescription("Event log messages rejected as corrupt or foreign.")); err != nil {
		return nil, err
	}
	if m.reads, err = meter.Int64Counter("watchgate.gateway.reads",
		metric.WithDescription("Range requests, by answer: cache (from the keyspace cache), response (a reused encoded response), passthrough (forwarded to the member), fallback (forwarded because the cache did not reach etcd's revision in time).")); err != nil {
		return nil, err
	}
	if m.probes, err = meter.Int64Counter("watchgate.gateway.revision_probes",
		metric.WithDescription("Linearizable revision probes sent to the member, each shared by every read and watch create waiting for it.")); err != nil {
		return nil, err
	}
	if m.readWait, err = meter.Float64Histogram("watchgate.gateway.read_wait",
		metric.WithDescription("Time linearizable reads waited for the revision probe and for the cache to reach its revision."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3)); err != nil {
		return nil, err
	}
	if m.cacheDrops, err = meter.Int64Counter("watchgate.gateway.keyspace_drops",
		metric.WithDescription("Times the keyspace cache could not follow the event log and was dropped for a rebuild.")); err != nil {
		return nil, err
	}
	_, err = meter.Int64ObservableGauge("watchgate.gateway.log_lag",
		metric.WithDescription("Revisions in the event log not yet applied by this replica."),
		metric.WithUnit("{revision}"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(m.lag.Load())
			return nil
		}))
	return m, err
}

// observeCache reports the keyspace and response caches' sizes.
func (s *Server) observeCache(meter metric.Meter) error {
	keys, err := meter.Int64ObservableGauge("watchgate.gateway.cache_keys",
		metric.WithDescription("Keys held by the keyspace cache (0 while it is being built or disabled)."))
	if err != nil {
		return err
	}
	bytes, err := meter.Int64ObservableGauge("watchgate.gateway.cache_bytes", metric.WithUnit("By"),
		metric.WithDescription("Estimated memory of the keyspace cache, bounded by --cache-max-bytes."))
	if err != nil {
		return err
	}
	responses, err := meter.Int64ObservableGauge("watchgate.gateway.response_cache_bytes", metric.WithUnit("By"),
		metric.WithDescription("Bytes of encoded range responses held for reuse, bounded by --response-cache-bytes."))
	if err != nil {
		return err
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		var n int
		var b int64
		if ks := s.hub.keys.Load(); ks != nil {
			n, b = ks.Stats()
		}
		o.ObserveInt64(keys, int64(n))
		o.ObserveInt64(bytes, b)
		if s.hub.responses != nil {
			_, rb := s.hub.responses.Stats()
			o.ObserveInt64(responses, rb)
		}
		return nil
	}, keys, bytes, responses)
	return err
}
