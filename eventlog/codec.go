package eventlog

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// HeaderRevision carries the etcd revision of a log message. It always equals the message's
// stream sequence; a message where it does not is rejected.
const HeaderRevision = "Watchgate-Revision"

// eventsField is the field number of `events` in etcd's WatchResponse. A message body is a
// sequence of that field, so the body is byte-for-byte the events part of a WatchResponse.
const eventsField protowire.Number = 11

// Errors returned when decoding a log message.
var (
	ErrCorrupt  = errors.New("eventlog: corrupt message")
	ErrMismatch = errors.New("eventlog: message revision does not match its sequence")
)

// Revision is every event of one etcd revision, in etcd's order.
type Revision struct {
	Rev    int64
	Events []*mvccpb.Event
	// Wire holds, for each event, its encoding as a field of an etcd WatchResponse (tag and
	// length included, prev_kv as logged): the bytes a watch response carries for it. The slices
	// share the message body; they are read-only.
	Wire [][]byte
	// Size is the encoded size of Events in bytes.
	Size int
}

// Encode returns the message body for events. Each event is marshalled once.
func Encode(events []*mvccpb.Event) ([]byte, error) {
	var b []byte
	for _, ev := range events {
		eb, err := proto.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("eventlog: encode: %w", err)
		}
		b = protowire.AppendTag(b, eventsField, protowire.BytesType)
		b = protowire.AppendBytes(b, eb)
	}
	return b, nil
}

// NewMsg builds the log message for revision rev. It carries its own fence: the message id
// (dropped if repeated) and the expected last sequence rev-1 (rejected unless the log ends just
// before rev), so a publish can only land at its own revision.
func NewMsg(subject string, rev int64, events []*mvccpb.Event) (*nats.Msg, error) {
	body, err := Encode(events)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(subject)
	m.Data = body
	m.Header.Set(HeaderRevision, strconv.FormatInt(rev, 10))
	m.Header.Set(jetstream.MsgIDHeader, strconv.FormatInt(rev, 10))
	m.Header.Set(jetstream.ExpectedLastSeqHeader, strconv.FormatInt(rev-1, 10))
	return m, nil
}

// Decode parses the message stored at stream sequence seq. It checks that the revision header
// equals seq, that the body is a well-formed list of events, that every event belongs to that
// revision, and that there is at least one event: etcd never makes an empty revision.
func Decode(seq uint64, header nats.Header, body []byte) (Revision, error) {
	rev := int64(seq)
	if h := header.Get(HeaderRevision); h != strconv.FormatInt(rev, 10) {
		return Revision{}, fmt.Errorf("%w: sequence %d has revision header %q", ErrMismatch, seq, h)
	}
	r := Revision{Rev: rev, Size: len(body)}
	for len(body) > 0 {
		field := body
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 || num != eventsField || typ != protowire.BytesType {
			return Revision{}, fmt.Errorf("%w: revision %d: bad field", ErrCorrupt, rev)
		}
		body = body[n:]
		eb, n := protowire.ConsumeBytes(body)
		if n < 0 {
			return Revision{}, fmt.Errorf("%w: revision %d: truncated event", ErrCorrupt, rev)
		}
		k := len(field) - len(body) + n
		field = field[:k:k]
		body = body[n:]
		ev := new(mvccpb.Event)
		if err := proto.Unmarshal(eb, ev); err != nil {
			return Revision{}, fmt.Errorf("%w: revision %d: %v", ErrCorrupt, rev, err)
		}
		if ev.GetKv().GetModRevision() != rev || len(ev.GetKv().GetKey()) == 0 {
			return Revision{}, fmt.Errorf("%w: revision %d holds an event of revision %d",
				ErrCorrupt, rev, ev.GetKv().GetModRevision())
		}
		r.Events = append(r.Events, ev)
		r.Wire = append(r.Wire, field)
	}
	if len(r.Events) == 0 {
		return Revision{}, fmt.Errorf("%w: revision %d has no events", ErrCorrupt, rev)
	}
	return r, nil
}
