// Package stacktest runs a whole watchgate deployment (internal/stack) for a test, on free
// loopback ports in t.TempDir(), with fsync off, torn down at cleanup.
package stacktest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/watchgate/watchgate/internal/stack"
)

// Start runs a stack; edit, if not nil, adjusts the options first. It returns once the gateway
// has caught up with the event log.
func Start(t testing.TB, edit func(*stack.Options)) *stack.Stack {
	t.Helper()
	return StartIn(t, t.TempDir(), edit)
}

// StartIn runs a stack whose data lives in dir (so a test can restart it on the same data).
func StartIn(t testing.TB, dir string, edit func(*stack.Options)) *stack.Stack {
	t.Helper()
	o := stack.Options{
		DataDir:        dir,
		ClientAddr:     "127.0.0.1:0",
		HTTPAddr:       "127.0.0.1:0",
		EtcdClientAddr: "127.0.0.1:0",
		EtcdPeerAddr:   "127.0.0.1:0",
		NATSPort:       -1,
		UnsafeNoFsync:  true,
		EtcdLogger:     zap.NewNop(),
	}
	if edit != nil {
		edit(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return st
}
