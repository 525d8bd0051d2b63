// Package faults runs a whole watchgate deployment on loopback (a 3-member etcd cluster, a
// 3-node JetStream cluster, elected ingest workers and several gateway replicas), kills and
// restarts its parts under concurrent writers and watchers, and checks afterwards that every
// watcher saw exactly etcd's history and that the keyspace is etcd's.
//
// The checker in this file is pure: it compares what watchers recorded with etcd's own history.
package faults

import (
	"bytes"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// Response is one watch response as a watcher received it.
type Response struct {
	Events []*mvccpb.Event
	// Canceled and CompactRevision are the response's own fields; Err its error, if any.
	Canceled        bool
	CompactRevision int64
	Err             error
}

// Watch is what one watcher asked for and everything it received, in order.
type Watch struct {
	Name string
	// Key and End are the watched range as etcd takes them (End empty: the key alone; "\x00":
	// every key from Key).
	Key, End string
	// Start is the watch's start revision.
	Start int64
	// PrevKV says whether the watch asked for previous key-values.
	PrevKV    bool
	Responses []Response
}

// History is etcd's history: each revision's events, in etcd's order, for consecutive
// revisions from From.
type History struct {
	From      int64
	Revisions [][]*mvccpb.Event
}

// Last is the history's last revision.
func (h History) Last() int64 { return h.From + int64(len(h.Revisions)) - 1 }

// Violation is one broken watch guarantee.
type Violation struct {
	Watch string
	// Guarantee is "ordered", "unique", "atomic", "reliable" or "canceled".
	Guarantee string
	Detail    string
}

func (v Violation) String() string { return fmt.Sprintf("%s: %s: %s", v.Watch, v.Guarantee, v.Detail) }

// CheckWatch compares what w received up to and including revision upTo with h, which must
// cover w's start (or revision h.From if earlier) through upTo. It reports every guarantee
// broken: events out of revision order (ordered), an event delivered twice (unique), a
// revision's events split across responses (atomic), an event missing or different from etcd's
// (reliable), and a watch ended by the server (canceled).
func CheckWatch(h History, w Watch, upTo int64) []Violation {
	var out []Violation
	report := func(g, format string, args ...any) {
		out = append(out, Violation{Watch: w.Name, Guarantee: g, Detail: fmt.Sprintf(format, args...)})
	}
	var got []*mvccpb.Event
	lastRev := int64(0)       // revision of the last event received
	respOf := map[int64]int{} // revision -> the response that carried it
	seen := map[string]bool{} // key@revision of every event received
	for i, r := range w.Responses {
		if r.Canceled || r.CompactRevision != 0 || r.Err != nil {
			report("canceled", "response %d: canceled=%v compact_revision=%d err=%v", i, r.Canceled, r.CompactRevision, r.Err)
		}
		for _, ev := range r.Events {
			rev := ev.Kv.ModRevision
			if rev < lastRev {
				report("ordered", "response %d: revision %d after %d", i, rev, lastRev)
			}
			lastRev = max(lastRev, rev)
			if j, ok := respOf[rev]; ok && j != i {
				report("atomic", "revision %d split between responses %d and %d", rev, j, i)
			}
			respOf[rev] = i
			id := fmt.Sprintf("%q@%d", ev.Kv.Key, rev)
			if seen[id] {
				report("unique", "%s delivered twice", id)
			}
			seen[id] = true
			if rev <= upTo {
				got = append(got, ev)
			}
		}
	}

	want := expected(h, w, upTo)
	for i := 0; i < max(len(want), len(got)); i++ {
		switch {
		case i >= len(got):
			report("reliable", "%d events missing from revision %d on (received up to %d)", len(want)-i, want[i].Kv.ModRevision, lastRev)
			return out
		case i >= len(want):
			report("reliable", "%d events etcd never made, from %s", len(got)-i, describe(got[i]))
			return out
		case !proto.Equal(want[i], got[i]):
			report("reliable", "event %d is %s, etcd's is %s", i, describe(got[i]), describe(want[i]))
			return out
		}
	}
	return out
}

// expected is what a watch like w must receive from h up to upTo.
func expected(h History, w Watch, upTo int64) []*mvccpb.Event {
	var out []*mvccpb.Event
	for rev := max(w.Start, h.From); rev <= min(upTo, h.Last()); rev++ {
		for _, ev := range h.Revisions[rev-h.From] {
			if !inRange(ev.Kv.Key, []byte(w.Key), []byte(w.End)) {
				continue
			}
			if !w.PrevKV && ev.PrevKv != nil {
				ev = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
			}
			out = append(out, ev)
		}
	}
	return out
}

// inRange reports whether k is in etcd's range [key, end).
func inRange(k, key, end []byte) bool {
	switch {
	case len(end) == 0:
		return bytes.Equal(k, key)
	case bytes.Equal(end, []byte{0}):
		return bytes.Compare(k, key) >= 0
	default:
		return bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0
	}
}

func describe(ev *mvccpb.Event) string {
	return fmt.Sprintf("%s %q@%d=%q", ev.Type, ev.Kv.Key, ev.Kv.ModRevision, ev.Kv.Value)
}

// CheckKeyspace compares the key-values a replica returned for a range with etcd's answer.
func CheckKeyspace(name string, etcd, got []*mvccpb.KeyValue) []Violation {
	render := func(kvs []*mvccpb.KeyValue) string {
		var b strings.Builder
		for _, kv := range kvs {
			fmt.Fprintf(&b, "%q=%q@%d/%d/%d\n", kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version)
		}
		return b.String()
	}
	if w, g := render(etcd), render(got); w != g {
		return []Violation{{Watch: name, Guarantee: "keyspace", Detail: fmt.Sprintf("differs from etcd's:\netcd:\n%sreplica:\n%s", w, g)}}
	}
	return nil
}
