package eventlog_test

import (
	"fmt"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/watchgate/watchgate/eventlog"
)

// benchRevision is the revision every benchmark here encodes or decodes.
const benchRevision = 1_000_000

// benchRevisions are the shapes of revision measured: a typical write (one PUT that replaces an
// existing value, so it carries prev_kv as ingest's watch delivers it) and a large transaction
// of 100 such PUTs. Keys are about 100 bytes and values 1 KiB.
var benchRevisions = []struct {
	name   string
	events int
}{
	{name: "put", events: 1},
	{name: "txn100", events: 100},
}

// benchEvents returns n PUT events of revision rev on distinct keys of benchKeyLen bytes, each
// with a 1 KiB value and a 1 KiB previous value.
func benchEvents(n int, rev int64) []*mvccpb.Event {
	const benchKeyLen = 100
	value := []byte(strings.Repeat("v", 1024))
	prev := []byte(strings.Repeat("p", 1024))
	evs := make([]*mvccpb.Event, n)
	for i := range evs {
		key := fmt.Sprintf("/registry/configmaps/default/benchmark-%06d", i)
		key += strings.Repeat("k", benchKeyLen-len(key))
		evs[i] = &mvccpb.Event{
			Type: mvccpb.Event_PUT,
			Kv: &mvccpb.KeyValue{Key: []byte(key), Value: value,
				CreateRevision: rev - 500, ModRevision: rev, Version: 7},
			PrevKv: &mvccpb.KeyValue{Key: []byte(key), Value: prev,
				CreateRevision: rev - 500, ModRevision: rev - 10, Version: 6},
		}
	}
	return evs
}

// BenchmarkEncode measures Encode: marshalling one revision's events into a log message body,
// as ingest does once per revision. Bytes/s is the body size.
func BenchmarkEncode(b *testing.B) {
	for _, bc := range benchRevisions {
		b.Run(bc.name, func(b *testing.B) {
			evs := benchEvents(bc.events, benchRevision)
			body, err := eventlog.Encode(evs)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := eventlog.Encode(evs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNewMsg measures NewMsg: Encode plus the message's revision and fence headers, which
// is everything ingest does to a revision before publishing it. Bytes/s is the body size.
func BenchmarkNewMsg(b *testing.B) {
	for _, bc := range benchRevisions {
		b.Run(bc.name, func(b *testing.B) {
			evs := benchEvents(bc.events, benchRevision)
			m, err := eventlog.NewMsg("watchgate.bench", benchRevision, evs)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(m.Data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := eventlog.NewMsg("watchgate.bench", benchRevision, evs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecode measures Decode: checking and unmarshalling one stored message back into
// events, as a gateway replica does once per revision it reads from the log. Bytes/s is the
// body size.
func BenchmarkDecode(b *testing.B) {
	for _, bc := range benchRevisions {
		b.Run(bc.name, func(b *testing.B) {
			m, err := eventlog.NewMsg("watchgate.bench", benchRevision, benchEvents(bc.events, benchRevision))
			if err != nil {
				b.Fatal(err)
			}
			// Decode once outside the loop so a broken body fails loudly rather than being timed.
			r, err := eventlog.Decode(benchRevision, m.Header, m.Data)
			if err != nil {
				b.Fatal(err)
			}
			if len(r.Events) != bc.events {
				b.Fatalf("decoded %d events, want %d", len(r.Events), bc.events)
			}
			b.SetBytes(int64(len(m.Data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := eventlog.Decode(benchRevision, m.Header, m.Data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
