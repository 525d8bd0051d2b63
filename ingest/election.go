package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Election makes an Ingester one of several workers for the same log, of which exactly one is
// active at a time: the others stand by and take over when the active one goes silent. The
// election is held in an etcd cluster (the member itself or a separate coordinator) with etcd's
// concurrency package: each worker campaigns with a key bound to a session lease; the oldest key
// is the active worker.
//
// The election decides who should publish; it does not make publishing safe. The log's fences do
// that (see eventlog.NewMsg): a deposed worker that has not noticed yet can only repeat, never
// reorder or duplicate, a revision its successor publishes, and it stops as soon as its session
// ends or its election key is deleted (only then can another key lead).
type Election struct {
	// Client is a client of the etcd cluster that holds the election. Required.
	Client *clientv3.Client
	// Prefix is the election's name: its keys are Prefix + "/" + a lease id. Every worker of
	// one log must use the same one. Default "/watchgate/ingest/" + the log's stream name.
	Prefix string
	// TTL is the remove delay: how long the active worker may be silent (its session lease
	// unrenewed) before a standby takes over. Rounded up to whole seconds; etcd raises it to its
	// own minimum lease TTL if lower. Default 5 s.
	TTL time.Duration
	// SyncInterval is how often a standby refreshes what it reports about the log and the member
	// (the lag gauge and Status). Default 5 s.
	SyncInterval time.Duration
	// Name identifies this worker in Status. Default "<hostname>-<pid>".
	Name string
	// Address is shown next to Name in Status, e.g. the worker's HTTP address. Default "".
	Address string
}

func (e *Election) withDefaults(stream string) Election {
	o := *e
	if o.Prefix == "" {
		o.Prefix = "/watchgate/ingest/" + stream
	}
	if o.TTL <= 0 {
		o.TTL = 5 * time.Second
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = 5 * time.Second
	}
	if o.Name == "" {
		host, _ := os.Hostname()
		o.Name = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	return o
}

// ttlSeconds is the session TTL in whole seconds, rounded up.
func (e *Election) ttlSeconds() int {
	return int((e.TTL + time.Second - 1) / time.Second)
}

// ErrDeposed ends a worker's term when another worker's key leads the election.
var ErrDeposed = errors.New("ingest: another worker leads the election")

// errSessionEnded ends a term when the session lease expired or could not be renewed.
var errSessionEnded = errors.New("ingest: election session ended")

// Candidate is one worker in the election, as its key's value records it.
type Candidate struct {
	Name    string `json:"name"`
	Address string `json:"address,omitempty"`
	// Since is when the worker joined the election.
	Since time.Time `json:"since"`
	// Key is the worker's election key; CreateRevision orders the candidates.
	Key            string `json:"-"`
	CreateRevision int64  `json:"-"`
}

// runElected campaigns, runs ingest while it leads, and campaigns again whenever a term ends,
// until ctx ends.
func (i *Ingester) runElected(ctx context.Context) error {
	for {
		err := i.term(ctx)
		i.lead.Store(nil)
		if ctx.Err() != nil {
			return nil
		}
		i.o.Logger.Warn("ingest election term ended; standing by again", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(i.o.RetryDelay):
		}
	}
}

// term is one session: stand by until elected, then ingest until the session ends, another
// worker leads, or ctx ends.
func (i *Ingester) term(ctx context.Context) error {
	el := i.election
	// The session outlives ctx so that a clean stop can still revoke its lease below: the next
	// worker then takes over at once instead of after the TTL.
	s, err := concurrency.NewSession(el.Client, concurrency.WithTTL(el.ttlSeconds()),
		concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return fmt.Errorf("ingest: election session: %w", err)
	}
	defer func() {
		s.Orphan()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_, _ = el.Client.Revoke(rctx, s.Lease())
	}()

	tctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-s.Done():
			cancel(errSessionEnded)
		case <-tctx.Done():
		}
	}()

	value, err := json.Marshal(Candidate{Name: el.Name, Address: el.Address, Since: time.Now().UTC()})
	if err != nil {
		return err
	}
	e := concurrency.NewElection(s, el.Prefix)
	standby, stopStandby := context.WithCancel(tctx)
	go i.syncStandby(standby)
	err = e.Campaign(tctx, string(value))
	stopStandby()
	if err != nil {
		if c := context.Cause(tctx); c != nil {
			return c
		}
		return fmt.Errorf("ingest: campaign: %w", err)
	}
	// Campaign returns once every older key is gone; make sure ours is still there.
	r, err := el.Client.Get(tctx, e.Key())
	if err != nil {
		return fmt.Errorf("ingest: election: %w", err)
	}
	if len(r.Kvs) == 0 || clientv3.LeaseID(r.Kvs[0].Lease) != s.Lease() {
		return ErrDeposed
	}
	// Ours is the oldest key, so another worker can lead only once it is deleted: watching it
	// notices a deposition from the delete itself, no later than the next worker can act on it.
	go func() {
		for wr := range el.Client.Watch(tctx, e.Key(), clientv3.WithRev(r.Header.Revision+1)) {
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					cancel(ErrDeposed)
					return
				}
			}
		}
	}()

	i.o.Logger.Info("elected active ingest worker", "name", el.Name, "key", e.Key())
	// Active from now until the term ends, the moment it is canceled, not once ingest has
	// wound down.
	i.lead.Store(&tctx)
	i.m.takeovers.Add(ctx, 1)
	i.runActive(tctx)
	return context.Cause(tctx)
}

// syncStandby refreshes, every SyncInterval until ctx ends, what a standby knows of the log's
// tail and the member's revision, so its lag gauge and Status stay meaningful.
func (i *Ingester) syncStandby(ctx context.Context) {
	t := time.NewTicker(i.election.SyncInterval)
	defer t.Stop()
	for {
		if b, err := i.o.Log.Bounds(ctx); err == nil {
			i.published.Store(b.Last)
		}
		if r, err := i.o.Member.Get(ctx, "\x00", clientv3.WithCountOnly(), clientv3.WithSerializable()); err == nil {
			i.noteMemberRev(r.Header.Revision)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Candidates lists the workers in the election named prefix, oldest first: the first is the
// active one, the rest stand by.
func Candidates(ctx context.Context, c *clientv3.Client, prefix string) ([]Candidate, error) {
	r, err := c.Get(ctx, prefix+"/", clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("ingest: read election %s: %w", prefix, err)
	}
	out := make([]Candidate, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		var cd Candidate
		if err := json.Unmarshal(kv.Value, &cd); err != nil {
			cd = Candidate{Name: string(kv.Value)} // a worker of another version, or a hand-made key
		}
		cd.Key, cd.CreateRevision = string(kv.Key), kv.CreateRevision
		out = append(out, cd)
	}
	return out, nil
}
