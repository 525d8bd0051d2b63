// Package ingest tails one etcd member cluster and appends its history to the event log.
//
// # What it guarantees
//
// An Ingester keeps one whole-keyspace watch (with prev_kv and progress notifications) on its
// member, starting at the revision after the log's last message, and publishes one log message
// per revision, in order, pipelined. Each message is fenced (eventlog.NewMsg): it can only land
// at its own revision, so however publishes fail, time out or are retried, the log never holds a
// revision twice, out of order or with a hole. On any error the Ingester stops publishing, waits
// for the publishes in flight to settle, re-reads the log's tail and resumes after it: nothing
// is lost and nothing is repeated.
//
// If the member has compacted past the log's end (ingest was away longer than the member's
// retention), the missing revisions cannot be recovered. The Ingester does not skip them
// silently: it moves the log forward with eventlog.Log.Jump, so gateways answer "compacted" for
// the missing range exactly as etcd would, and logs a warning.
//
// # Active and standby workers
//
// With Options.Election, any number of Ingesters per log hold an election in etcd: one is
// active, the others stand by, refreshing the log's tail and the member's revision every
// Election.SyncInterval, and the oldest standby takes over once the active worker's session
// lease (Election.TTL, the remove delay) expires. A clean stop revokes the lease, so the
// next worker takes over at once. A worker steps down as soon as its session ends or another
// key leads; until it notices, the fences above make whatever it still publishes harmless.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/watchgate/watchgate/eventlog"
)

// Options configures an Ingester.
type Options struct {
	// Member is a client of the etcd member cluster to tail. Required.
	Member *clientv3.Client
	// Log is the event log to append to, opened with eventlog.Ensure. Required.
	Log *eventlog.Log
	// MaxInFlight bounds the publishes awaiting acknowledgement. Default 1024.
	MaxInFlight int
	// AckTimeout is how long the log may take to acknowledge one publish before ingest treats it
	// as failed and resumes from the tail. A publish in flight when the stream's leader is lost
	// is never acknowledged, so this bounds ingest's pause across a leader change. Default
	// DefaultAckTimeout.
	AckTimeout time.Duration
	// RetryDelay is the pause before resuming after an error. Default 500 ms.
	RetryDelay time.Duration
	// Logger receives warnings and errors. Default: discard.
	Logger *slog.Logger
	// Meter records metrics. Default: no-op.
	Meter metric.Meter
	// Election, if set, makes this Ingester one of several workers for the log, of which one is
	// active and the others stand by (see Election). Default nil: always active, for a single
	// worker.
	Election *Election
}

// DefaultAckTimeout is Options.AckTimeout's default: longer than a healthy cluster's slowest
// acknowledgement under load, shorter than the pause a lost stream leader would otherwise cause.
const DefaultAckTimeout = 3 * time.Second

// Errors returned by an Ingester's attempt; Run logs them and resumes from the log's tail.
var (
	ErrGap       = errors.New("ingest: member skipped a revision")
	ErrCompacted = errors.New("ingest: member compacted past the log's end")
)

// Ingester tails one member into one log.
type Ingester struct {
	o Options
	m metrics

	election Election // with defaults applied; used only when o.Election is set

	published atomic.Int64 // last revision the log acknowledged
	memberRev atomic.Int64 // newest member revision seen in a watch response header
	// lead is the context this worker publishes under (Run's, or its election term's); nil
	// while it stands by. It is active while that context is live.
	lead atomic.Pointer[context.Context]
}

// New checks o and returns an Ingester. It does no I/O.
func New(o Options) (*Ingester, error) {
	if o.Member == nil || o.Log == nil {
		return nil, errors.New("ingest: Member and Log are required")
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 1024
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 500 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Meter == nil {
		o.Meter = noop.NewMeterProvider().Meter("")
	}
	i := &Ingester{o: o}
	if o.Election != nil {
		if o.Election.Client == nil {
			return nil, errors.New("ingest: Election.Client is required")
		}
		i.election = o.Election.withDefaults(o.Log.Stream())
	}
	if err := i.m.init(o.Meter, i); err != nil {
		return nil, err
	}
	return i, nil
}

// Published is the last revision the log has acknowledged from this Ingester (0 before any).
func (i *Ingester) Published() int64 { return i.published.Load() }

// Active reports whether this Ingester is publishing now: always while Run runs without an
// election; with one, only while it leads.
func (i *Ingester) Active() bool {
	c := i.lead.Load()
	return c != nil && (*c).Err() == nil
}

// Run ingests until ctx ends, resuming from the log's tail after every error. With an Election
// it first stands by until elected, and stands by again whenever it loses the lead. It returns
// nil when ctx ends.
func (i *Ingester) Run(ctx context.Context) error {
	if i.o.Election != nil {
		return i.runElected(ctx)
	}
	i.lead.Store(&ctx)
	defer i.lead.Store(nil)
	i.runActive(ctx)
	return nil
}

// runActive ingests until ctx ends, resuming from the log's tail after every error.
func (i *Ingester) runActive(ctx context.Context) {
	for {
		err := i.attempt(ctx)
		if ctx.Err() != nil {
			return
		}
		i.m.restarts.Add(ctx, 1)
		if errors.Is(err, ErrCompacted) {
			i.o.Logger.Warn("member compacted past the event log; the missing revisions are recorded as compacted", "err", err)
		} else {
			i.o.Logger.Error("ingest interrupted; resuming from the log's tail", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(i.o.RetryDelay):
		}
	}
}

// noteMemberRev records rev if it is the newest member revision seen.
func (i *Ingester) noteMemberRev(rev int64) {
	for {
		cur := i.memberRev.Load()
		if rev <= cur || i.memberRev.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// attempt runs one watch from the log's tail until an error.
func (i *Ingester) attempt(ctx context.Context) error {
	b, err := i.o.Log.Bounds(ctx)
	if err != nil {
		return err
	}
	next := b.Last + 1
	i.published.Store(b.Last)

	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p, err := newPipeline(ctx, i.o.Log, i.o.MaxInFlight, i.o.AckTimeout, &i.published, &i.m, cancel)
	if err != nil {
		return err
	}
	// Let the publishes in flight settle before the next attempt reads the tail.
	defer p.close()

	wch := i.o.Member.Watch(clientv3.WithRequireLeader(wctx), "", clientv3.WithFromKey(),
		clientv3.WithRev(next), clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	for resp := range wch {
		i.noteMemberRev(resp.Header.Revision)
		if resp.CompactRevision != 0 {
			return i.jump(wctx, p, next, resp.CompactRevision)
		}
		if err := resp.Err(); err != nil {
			return fmt.Errorf("ingest: watch: %w", err)
		}
		for _, evs := range groupEvents(resp.Events) {
			rev := evs[0].Kv.ModRevision
			if rev != next {
				return fmt.Errorf("%w: expected revision %d, got %d", ErrGap, next, rev)
			}
			if err := p.publish(wctx, rev, evs); err != nil {
				return err
			}
			next = rev + 1
		}
	}
	if err := context.Cause(wctx); err != nil {
		return err
	}
	return errors.New("ingest: watch closed")
}

// jump records in the log that the member compacted away revisions [next, compact], once every
// publish before next has been acknowledged.
func (i *Ingester) jump(ctx context.Context, p *pipeline, next, compact int64) error {
	if err := p.drain(ctx); err != nil {
		return err
	}
	if err := i.o.Log.Jump(ctx, compact+1); err != nil {
		return err
	}
	i.m.jumps.Add(ctx, 1)
	return fmt.Errorf("%w: revisions %d to %d are gone; the log now starts at %d", ErrCompacted, next, compact, compact+1)
}

// groupEvents splits a watch response's events into revisions. etcd never splits a revision
// across watch responses (fragmentation is off), so each group is a whole revision.
func groupEvents(evs []*mvccpb.Event) [][]*mvccpb.Event {
	var out [][]*mvccpb.Event
	for len(evs) > 0 {
		n := 1
		for n < len(evs) && evs[n].Kv.ModRevision == evs[0].Kv.ModRevision {
			n++
		}
		out = append(out, evs[:n])
		evs = evs[n:]
	}
	return out
}
