package eventlog

import (
	"errors"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

func put(key string, rev int64) *mvccpb.Event {
	return &mvccpb.Event{Type: mvccpb.Event_PUT,
		Kv:     &mvccpb.KeyValue{Key: []byte(key), Value: []byte("v"), CreateRevision: rev, ModRevision: rev, Version: 1},
		PrevKv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte("old"), CreateRevision: 2, ModRevision: 2, Version: 1}}
}

func TestRoundTrip(t *testing.T) {
	evs := []*mvccpb.Event{put("a", 7), put("b", 7),
		{Type: mvccpb.Event_DELETE, Kv: &mvccpb.KeyValue{Key: []byte("c"), ModRevision: 7}}}
	m, err := NewMsg("subj", 7, evs)
	if err != nil {
		t.Fatal(err)
	}
	for h, want := range map[string]string{HeaderRevision: "7", jetstream.MsgIDHeader: "7",
		jetstream.ExpectedLastSeqHeader: "6"} {
		if got := m.Header.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
	r, err := Decode(7, m.Header, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(evs, r.Events, protocmp.Transform()); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	if r.Rev != 7 || r.Size != len(m.Data) {
		t.Fatalf("rev %d size %d", r.Rev, r.Size)
	}
}

func TestDecodeRejects(t *testing.T) {
	good, err := Encode([]*mvccpb.Event{put("a", 9)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := Encode([]*mvccpb.Event{put("a", 8)})
	if err != nil {
		t.Fatal(err)
	}
	noKey, err := Encode([]*mvccpb.Event{{Kv: &mvccpb.KeyValue{ModRevision: 9}}})
	if err != nil {
		t.Fatal(err)
	}
	hdr := func(rev string) nats.Header {
		h := nats.Header{}
		if rev != "" {
			h.Set(HeaderRevision, rev)
		}
		return h
	}
	tests := []struct {
		name   string
		header nats.Header
		body   []byte
		want   error
	}{
		{"revision header differs from sequence", hdr("8"), good, ErrMismatch},
		{"no revision header", hdr(""), good, ErrMismatch},
		{"empty revision", hdr("9"), nil, ErrCorrupt},
		{"event of another revision", hdr("9"), other, ErrCorrupt},
		{"event without a key", hdr("9"), noKey, ErrCorrupt},
		{"truncated", hdr("9"), good[:len(good)-3], ErrCorrupt},
		{"foreign field", hdr("9"), append([]byte{0x08, 0x01}, good...), ErrCorrupt},
		{"garbage", hdr("9"), []byte("not a protobuf at all"), ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Decode(9, tt.header, tt.body); !errors.Is(err, tt.want) {
				t.Fatalf("Decode = %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := Decode(9, hdr(strconv.Itoa(9)), good); err != nil {
		t.Fatalf("good message rejected: %v", err)
	}
}

// TestDecodeWire checks that each event's wire bytes are exactly its WatchResponse field: a
// response made of a header plus those bytes decodes to the same events.
func TestDecodeWire(t *testing.T) {
	events := []*mvccpb.Event{
		{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte("a"), Value: []byte("1"), ModRevision: 7, CreateRevision: 7, Version: 1}},
		{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("b"), ModRevision: 7},
			PrevKv: &mvccpb.KeyValue{Key: []byte("b"), Value: []byte("old"), ModRevision: 3, CreateRevision: 2, Version: 2}},
	}
	m, err := NewMsg("s", 7, events)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Decode(7, m.Header, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Wire) != len(events) {
		t.Fatalf("%d wire fields for %d events", len(r.Wire), len(events))
	}
	for i, w := range r.Wire {
		var resp pb.WatchResponse
		if err := proto.Unmarshal(w, &resp); err != nil {
			t.Fatal(err)
		}
		if len(resp.Events) != 1 || !proto.Equal(resp.Events[0], events[i]) {
			t.Errorf("wire %d decodes to %v, want %v", i, resp.Events, events[i])
		}
		if cap(w) != len(w) {
			t.Errorf("wire %d can be appended to in place (cap %d > len %d)", i, cap(w), len(w))
		}
	}
}
