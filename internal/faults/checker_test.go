package faults

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

func put(key string, rev int64, value string) *mvccpb.Event {
	return &mvccpb.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev, CreateRevision: rev, Version: 1, Value: []byte(value)}}
}

// TestCheckWatch feeds the checker a correct delivery and one broken in each way, and checks it
// names exactly the guarantee broken.
func TestCheckWatch(t *testing.T) {
	h := History{From: 2, Revisions: [][]*mvccpb.Event{
		{put("a", 2, "1")},
		{put("b", 3, "1"), put("c", 3, "1")}, // a txn
		{put("a", 4, "2")},
		{put("z", 5, "1")},
	}}
	ev := func(rev int64, i int) *mvccpb.Event { return h.Revisions[rev-2][i] }
	resp := func(evs ...*mvccpb.Event) Response { return Response{Events: evs} }
	good := []Response{resp(ev(2, 0)), resp(ev(3, 0), ev(3, 1)), resp(ev(4, 0))}

	tests := []struct {
		name string
		w    Watch
		want []string // guarantees reported
	}{
		{"correct", Watch{Key: "a", End: "d", Start: 1, Responses: good}, nil},
		{"correct from a later start", Watch{Key: "a", End: "d", Start: 3, Responses: good[1:]}, nil},
		{"single key", Watch{Key: "a", Start: 2, Responses: []Response{resp(ev(2, 0)), resp(ev(4, 0))}}, nil},
		{"from key", Watch{Key: "b", End: "\x00", Start: 2, Responses: []Response{resp(ev(3, 0), ev(3, 1), ev(5, 0))}}, nil},
		{"lost", Watch{Key: "a", End: "d", Start: 1, Responses: []Response{good[0], good[2]}}, []string{"reliable"}},
		{"lost at the end", Watch{Key: "a", End: "d", Start: 1, Responses: good[:2]}, []string{"reliable"}},
		{"duplicated", Watch{Key: "a", End: "d", Start: 1, Responses: []Response{good[0], good[1], good[1], good[2]}},
			[]string{"atomic", "unique", "unique", "reliable"}},
		{"reordered", Watch{Key: "a", End: "d", Start: 1, Responses: []Response{good[0], good[2], good[1]}},
			[]string{"ordered", "ordered", "reliable"}},
		{"split txn", Watch{Key: "a", End: "d", Start: 1, Responses: []Response{good[0], resp(ev(3, 0)), resp(ev(3, 1)), good[2]}},
			[]string{"atomic"}},
		{"wrong value", Watch{Key: "a", End: "d", Start: 1, Responses: []Response{good[0], good[1], resp(put("a", 4, "X"))}},
			[]string{"reliable"}},
		{"outside the range", Watch{Key: "a", End: "b", Start: 1, Responses: good}, []string{"reliable"}},
		{"canceled", Watch{Key: "a", End: "d", Start: 1, Responses: append(good[:3:3], Response{Canceled: true, Err: errors.New("x")})},
			[]string{"canceled"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.w.Name = tt.name
			var got []string
			for _, v := range CheckWatch(h, tt.w, 4) {
				got = append(got, v.Guarantee)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("violations (-want +got):\n%s\n%v", diff, CheckWatch(h, tt.w, 4))
			}
		})
	}
}

func TestCheckKeyspace(t *testing.T) {
	a, b := put("a", 2, "1"), put("b", 3, "1")
	if v := CheckKeyspace("same", []*mvccpb.KeyValue{a.Kv, b.Kv}, []*mvccpb.KeyValue{a.Kv, b.Kv}); v != nil {
		t.Errorf("same keyspace: %v", v)
	}
	for name, got := range map[string][]*mvccpb.KeyValue{
		"missing": {a.Kv}, "extra": {a.Kv, b.Kv, put("c", 4, "1").Kv}, "stale": {a.Kv, put("b", 2, "0").Kv},
	} {
		if v := CheckKeyspace(name, []*mvccpb.KeyValue{a.Kv, b.Kv}, got); len(v) != 1 {
			t.Errorf("%s: %v", name, fmt.Sprint(v))
		}
	}
}
