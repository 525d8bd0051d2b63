package stack

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestStartFailureCleansUp starts a stack whose gateway port is taken: Start must return the
// error (not panic) after stopping the etcd and NATS servers it had already started.
func TestStartFailureCleansUp(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	st, err := Start(ctx, Options{DataDir: t.TempDir(), ClientAddr: taken.Addr().String(),
		HTTPAddr: "off", EtcdClientAddr: "127.0.0.1:0", EtcdPeerAddr: "127.0.0.1:0", NATSPort: -1,
		UnsafeNoFsync: true, EtcdLogger: zap.NewNop()})
	if err == nil {
		st.Close()
		t.Fatal("Start succeeded on a taken port")
	}
	if !strings.Contains(err.Error(), "gateway listener") {
		t.Fatalf("Start error = %v, want the gateway listener's", err)
	}
}
