package ingest

import (
	"context"

	"go.opentelemetry.io/otel/metric"
)

// metrics are an Ingester's instruments.
type metrics struct {
	published metric.Int64Counter
	restarts  metric.Int64Counter
	jumps     metric.Int64Counter
	takeovers metric.Int64Counter
}

func (m *metrics) init(meter metric.Meter, i *Ingester) error {
	var err error
	if m.published, err = meter.Int64Counter("watchgate.ingest.revisions",
		metric.WithDescription("Revisions appended to the event log and acknowledged.")); err != nil {
		return err
	}
	if m.restarts, err = meter.Int64Counter("watchgate.ingest.restarts",
		metric.WithDescription("Times ingest resumed from the log's tail after an error.")); err != nil {
		return err
	}
	if m.jumps, err = meter.Int64Counter("watchgate.ingest.compaction_jumps",
		metric.WithDescription("Times the member had compacted past the log's end.")); err != nil {
		return err
	}
	if m.takeovers, err = meter.Int64Counter("watchgate.ingest.elected",
		metric.WithDescription("Times this worker won the ingest election and became the active one.")); err != nil {
		return err
	}
	if _, err = meter.Int64ObservableGauge("watchgate.ingest.active",
		metric.WithDescription("1 while this worker publishes to the event log, 0 while it stands by."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			var v int64
			if i.Active() {
				v = 1
			}
			o.Observe(v)
			return nil
		})); err != nil {
		return err
	}
	_, err = meter.Int64ObservableGauge("watchgate.ingest.lag",
		metric.WithDescription("Member revision minus the last revision in the log."),
		metric.WithUnit("{revision}"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(max(0, i.memberRev.Load()-i.published.Load()))
			return nil
		}))
	return err
}
