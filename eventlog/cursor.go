package eventlog

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Entry is one step of a Cursor: the next revision held by the log.
type Entry struct {
	// Revision is the decoded revision; when Err is set only Revision.Rev is meaningful.
	Revision
	// Missing is the first revision of a hole just before this one: revisions [Missing, Rev) are
	// no longer in the log (dropped by its limits or by Jump). Zero when there is no hole.
	Missing int64
	// Pending is how many revisions the log held after this one when it was delivered.
	Pending uint64
	// Stored is when the NATS server stored the revision (its clock).
	Stored time.Time
	// Err is a decoding error: the message at Rev is corrupt or foreign and must not be applied.
	Err error
}

// Cursor reads the log in order from a revision, following new revisions as they arrive. It is
// backed by a JetStream ordered consumer, which recreates itself after disconnects, so a cursor
// delivers every held revision once and in order. A Cursor is used by one goroutine.
type Cursor struct {
	it   jetstream.MessagesContext
	next int64
}

// DefaultCursorBuffer is how many messages a cursor buffers ahead of its reader.
const DefaultCursorBuffer = 512

// cursorHeartbeat is how often the server tells an idle cursor it is still there. A cursor
// whose consumer vanished (its JetStream node died) notices after two missed heartbeats and
// recreates the consumer where it left off, so this bounds a replica's pause when it loses the
// node serving its consumer. The client's default for ordered consumers, 5 s, made that pause
// 10 s.
const cursorHeartbeat = time.Second

// Follow opens a cursor at revision from. buffer bounds the messages fetched ahead of the reader
// (0 means DefaultCursorBuffer).
func (l *Log) Follow(ctx context.Context, from int64, buffer int) (*Cursor, error) {
	if from < 1 {
		from = 1
	}
	if buffer <= 0 {
		buffer = DefaultCursorBuffer
	}
	cons, err := l.js.OrderedConsumer(ctx, l.cfg.Stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   uint64(from),
	})
	if err != nil {
		return nil, fmt.Errorf("eventlog: follow from %d: %w", from, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(buffer), jetstream.PullHeartbeat(cursorHeartbeat))
	if err != nil {
		return nil, fmt.Errorf("eventlog: follow from %d: %w", from, err)
	}
	return &Cursor{it: it, next: from}, nil
}

// Next blocks until the next revision is in the log, or ctx ends.
func (c *Cursor) Next(ctx context.Context) (Entry, error) {
	for {
		m, err := c.it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return Entry{}, fmt.Errorf("eventlog: read: %w", err)
		}
		md, err := m.Metadata()
		if err != nil {
			return Entry{}, fmt.Errorf("eventlog: read: %w", err)
		}
		seq := int64(md.Sequence.Stream)
		if seq < c.next {
			continue // redelivered after a consumer reset
		}
		e := Entry{Pending: md.NumPending, Stored: md.Timestamp}
		if seq > c.next {
			e.Missing = c.next
		}
		c.next = seq + 1
		e.Revision, e.Err = Decode(md.Sequence.Stream, m.Headers(), m.Data())
		e.Rev = seq
		return e, nil
	}
}

// Close stops the cursor and releases its consumer.
func (c *Cursor) Close() { c.it.Stop() }
