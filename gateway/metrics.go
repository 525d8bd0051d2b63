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
	_, err = meter.Int64ObservableGauge("watchgate.gateway.log_lag",
		metric.WithDescription("Revisions in the event log not yet applied by this replica."),
		metric.WithUnit("{revision}"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(m.lag.Load())
			return nil
		}))
	return m, err
}
