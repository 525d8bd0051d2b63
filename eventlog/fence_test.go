package eventlog_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/internal/testenv"
)

// TestFence publishes to a real JetStream stream the way a confused writer would and checks
// the log only ever takes revision R at sequence R.
func TestFence(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	_, js := testenv.JetStream(t, testenv.NATS(t).ClientURL())
	l := testenv.EventLog(ctx, t, js)
	publish := func(rev int64, key string) error {
		ev := &mvccpb.Event{Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev, CreateRevision: rev, Version: 1}}
		m, err := eventlog.NewMsg(l.Subject(), rev, []*mvccpb.Event{ev})
		if err != nil {
			t.Fatal(err)
		}
		_, err = js.PublishMsg(ctx, m)
		return err
	}
	wrongSeq := func(err error) bool {
		var apiErr *jetstream.APIError
		return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
	}
	for rev := int64(eventlog.FirstRevision); rev <= 3; rev++ {
		if err := publish(rev, "a"); err != nil {
			t.Fatalf("publish %d: %v", rev, err)
		}
	}
	// A writer that lost revision 4 must not land revision 5 at sequence 4.
	if err := publish(5, "skipped"); !wrongSeq(err) {
		t.Fatalf("publish 5 after 3 = %v, want wrong last sequence", err)
	}
	// A stale writer repeating revision 3 with other content changes nothing.
	if err := publish(3, "stale"); err == nil {
		b, _ := l.Bounds(ctx)
		if b.Last != 3 {
			t.Fatalf("stale publish of 3 moved the log to %d", b.Last)
		}
	}
	if err := publish(4, "a"); err != nil {
		t.Fatalf("publish 4: %v", err)
	}
	b, err := l.Bounds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b.First != eventlog.FirstRevision || b.Last != 4 {
		t.Fatalf("bounds %+v, want [2, 4]", b)
	}
	cur, err := l.Follow(ctx, eventlog.FirstRevision, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	for rev := int64(eventlog.FirstRevision); rev <= 4; rev++ {
		e, err := cur.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if e.Err != nil || e.Rev != rev || string(e.Events[0].Kv.Key) != "a" {
			t.Fatalf("sequence %d holds revision %d key %q (err %v)", rev, e.Rev, e.Events[0].Kv.Key, e.Err)
		}
	}
}
