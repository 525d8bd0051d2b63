package eventlog

import (
	"bytes"
	"errors"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// FuzzDecode feeds Decode arbitrary messages: any sequence, any revision header, any body, as a
// foreign publisher on the log's subject or a damaged store could leave them. Decode must never
// panic, must classify every refusal as ErrMismatch or ErrCorrupt, and whatever it accepts must
// be a revision a gateway can apply and serve as is:
//
//   - the header names the sequence, and the revision is the sequence;
//   - at least one event, every event with a key and the message's revision as mod_revision;
//   - one wire field per event, full to capacity, together exactly the body, each one decoding
//     (as a WatchResponse field) to its event, and Size the body's length.
//
// Re-encoding is not byte-for-byte: protobuf accepts encodings Marshal never writes (fields out
// of order or repeated, unknown fields, overlong varints), and Decode keeps the logged bytes.
// What holds is that Encode of the decoded events is a canonical form: it decodes to equal
// events, and encoding those again gives the same bytes.
func FuzzDecode(f *testing.F) {
	put := func(key string, rev int64) *mvccpb.Event {
		return &mvccpb.Event{Type: mvccpb.PUT,
			Kv:     &mvccpb.KeyValue{Key: []byte(key), Value: []byte("v"), CreateRevision: 2, ModRevision: rev, Version: rev - 1, Lease: 7},
			PrevKv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte("old"), CreateRevision: 2, ModRevision: 2, Version: 1}}
	}
	del := func(key string, rev int64) *mvccpb.Event {
		return &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev}}
	}
	body := func(evs ...*mvccpb.Event) []byte {
		b, err := Encode(evs)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	one := body(put("a", 9))
	f.Add(uint64(9), "9", one)
	f.Add(uint64(9), "8", one)
	f.Add(uint64(9), "", one)
	f.Add(uint64(9), "09", one)
	f.Add(uint64(9), "9", []byte{})
	f.Add(uint64(9), "9", one[:len(one)-1])
	f.Add(uint64(9), "9", body(put("a", 9), del("b", 9), put("\x00\xff", 9)))
	f.Add(uint64(9), "9", body(put("a", 8)))
	f.Add(uint64(9), "9", body(&mvccpb.Event{Kv: &mvccpb.KeyValue{ModRevision: 9}}))
	f.Add(uint64(9), "9", append([]byte{0x08, 0x01}, one...))
	f.Add(uint64(9), "9", []byte(`{"key":"a","revision":9}`))
	f.Add(uint64(1<<63), "-9223372036854775808", body(put("a", -1<<63)))
	f.Add(uint64(2), "2", body(&mvccpb.Event{Type: 7, Kv: &mvccpb.KeyValue{Key: []byte("a"), ModRevision: 2}}))

	f.Fuzz(func(t *testing.T, seq uint64, rev string, body []byte) {
		header := nats.Header{}
		header.Set(HeaderRevision, rev)
		r, err := Decode(seq, header, body)
		if err != nil {
			mismatch := rev != strconv.FormatInt(int64(seq), 10)
			if mismatch && !errors.Is(err, ErrMismatch) || !mismatch && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Decode(%d, %q) = %v: want ErrMismatch exactly when the header is not the sequence", seq, rev, err)
			}
			if r.Events != nil || r.Wire != nil {
				t.Fatalf("Decode returned events with error %v", err)
			}
			return
		}
		checkRevision(t, seq, rev, body, r)

		canonical, err := Encode(r.Events)
		if err != nil {
			t.Fatalf("re-encoding decoded events: %v", err)
		}
		again, err := Decode(seq, header, canonical)
		if err != nil {
			t.Fatalf("the re-encoded body is rejected: %v", err)
		}
		checkRevision(t, seq, rev, canonical, again)
		if len(again.Events) != len(r.Events) {
			t.Fatalf("re-encoded body holds %d events, want %d", len(again.Events), len(r.Events))
		}
		for i := range r.Events {
			if !proto.Equal(r.Events[i], again.Events[i]) {
				t.Fatalf("event %d differs after re-encoding:\n%v\n%v", i, r.Events[i], again.Events[i])
			}
		}
		if twice, err := Encode(again.Events); err != nil || !bytes.Equal(twice, canonical) {
			t.Fatalf("encoding is not canonical: %x, then %x (%v)", canonical, twice, err)
		}
	})
}

// checkRevision checks what Decode promises of a revision it accepted from body.
func checkRevision(t *testing.T, seq uint64, rev string, body []byte, r Revision) {
	t.Helper()
	if r.Rev != int64(seq) || rev != strconv.FormatInt(r.Rev, 10) {
		t.Fatalf("accepted revision %d at sequence %d with header %q", r.Rev, seq, rev)
	}
	if len(r.Events) == 0 || len(r.Wire) != len(r.Events) {
		t.Fatalf("%d events, %d wire fields", len(r.Events), len(r.Wire))
	}
	if r.Size != len(body) {
		t.Fatalf("size %d, body %d bytes", r.Size, len(body))
	}
	var joined []byte
	for i, ev := range r.Events {
		if ev.GetKv() == nil || len(ev.Kv.Key) == 0 || ev.Kv.ModRevision != r.Rev {
			t.Fatalf("event %d does not belong to revision %d: %v", i, r.Rev, ev)
		}
		w := r.Wire[i]
		if cap(w) != len(w) {
			t.Fatalf("wire %d can be appended to in place (cap %d > len %d)", i, cap(w), len(w))
		}
		var resp pb.WatchResponse
		if err := proto.Unmarshal(w, &resp); err != nil {
			t.Fatalf("wire %d is not a WatchResponse field: %v", i, err)
		}
		if len(resp.Events) != 1 || !proto.Equal(resp.Events[0], ev) {
			t.Fatalf("wire %d decodes to %v, want %v", i, resp.Events, ev)
		}
		joined = append(joined, w...)
	}
	if !bytes.Equal(joined, body) {
		t.Fatalf("wire fields %x do not make up the body %x", joined, body)
	}
}
