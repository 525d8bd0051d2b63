package ingest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/watchgate/watchgate/eventlog"
)

// pipeline publishes revisions asynchronously, in order, with a bounded number in flight, and
// checks their acknowledgements in order on its own goroutine.
type pipeline struct {
	log *eventlog.Log
	// pub is this pipeline's own JetStream publishing context. Its pending acknowledgements
	// expire after the ack timeout and are dropped when the pipeline closes, so publishes lost
	// in an outage never count against the next attempt's in-flight limit.
	pub       jetstream.JetStream
	published *atomic.Int64
	m         *metrics
	fail      context.CancelCauseFunc // stops the attempt with the first publish error
	timeout   time.Duration           // how long one acknowledgement may take

	// inflight is sent to by publish (the attempt's goroutine) and drained by ackLoop; its
	// capacity is the in-flight bound, so a full pipeline blocks publish.
	inflight  chan inflight
	closeOnce sync.Once
	done      chan struct{} // closed when ackLoop returns
}

type inflight struct {
	rev int64
	ack jetstream.PubAckFuture
}

// newPipeline starts the acknowledgement loop; it stops waiting for acknowledgements when ctx
// ends.
func newPipeline(ctx context.Context, log *eventlog.Log, max int, timeout time.Duration,
	published *atomic.Int64, m *metrics, fail context.CancelCauseFunc) (*pipeline, error) {
	// Registered acknowledgements: up to max in the channel, one ackLoop is waiting for and one
	// publish is registering, so the publisher's own cap never stalls a publish before the
	// channel would block it.
	pub, err := jetstream.New(log.JetStream().Conn(),
		jetstream.WithPublishAsyncMaxPending(max+2), jetstream.WithPublishAsyncTimeout(timeout))
	if err != nil {
		return nil, fmt.Errorf("ingest: publisher: %w", err)
	}
	p := &pipeline{
		log:       log,
		pub:       pub,
		timeout:   timeout,
		published: published,
		m:         m,
		fail:      fail,
		inflight:  make(chan inflight, max),
		done:      make(chan struct{}),
	}
	go p.ackLoop(ctx)
	return p, nil
}

// publish sends revision rev without waiting for its acknowledgement.
func (p *pipeline) publish(ctx context.Context, rev int64, evs []*mvccpb.Event) error {
	msg, err := eventlog.NewMsg(p.log.Subject(), rev, evs)
	if err != nil {
		return err
	}
	ack, err := p.pub.PublishMsgAsync(msg)
	if err != nil {
		return fmt.Errorf("ingest: publish %d: %w", rev, err)
	}
	select {
	case p.inflight <- inflight{rev: rev, ack: ack}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// ackLoop checks acknowledgements in publish order. At the first failure it stops the attempt
// and returns without waiting for the rest: their fences make any that still land harmless, and
// the next attempt starts from whatever the log's tail then is.
func (p *pipeline) ackLoop(ctx context.Context) {
	defer close(p.done)
	timer := time.NewTimer(p.timeout)
	defer timer.Stop()
	for f := range p.inflight {
		timer.Reset(p.timeout)
		var err error
		select {
		case ack := <-f.ack.Ok():
			if int64(ack.Sequence) == f.rev {
				p.published.Store(f.rev)
				p.m.published.Add(ctx, 1)
				continue
			}
			err = fmt.Errorf("ingest: revision %d landed at sequence %d", f.rev, ack.Sequence)
		case err = <-f.ack.Err():
			err = fmt.Errorf("ingest: publish %d: %w", f.rev, err)
		case <-timer.C:
			err = fmt.Errorf("ingest: publish %d: no acknowledgement within %v", f.rev, p.timeout)
		case <-ctx.Done():
			return
		}
		p.fail(err)
		return
	}
}

// drain waits until every publish so far is acknowledged, and reports the first failure.
func (p *pipeline) drain(ctx context.Context) error {
	p.close()
	return context.Cause(ctx)
}

// close stops taking publishes, waits for the acknowledgement loop to finish and drops the
// acknowledgements still pending.
func (p *pipeline) close() {
	p.closeOnce.Do(func() {
		close(p.inflight)
		<-p.done
		p.pub.CleanupPublisher()
	})
	<-p.done
}
