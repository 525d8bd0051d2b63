// Package testenv runs real servers for tests: embedded etcd and embedded NATS JetStream, on
// loopback, in t.TempDir(), torn down by t.Cleanup. No mocks.
package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/internal/embedded"
)

// Etcd starts a single-member etcd with fsync disabled in a temporary directory.
func Etcd(t testing.TB) *embedded.Etcd {
	t.Helper()
	return EtcdIn(t, t.TempDir())
}

// EtcdIn starts (or restarts) a single-member etcd whose data lives in dir.
func EtcdIn(t testing.TB, dir string) *embedded.Etcd {
	t.Helper()
	e, err := embedded.StartEtcd(embedded.EtcdOptions{Dir: dir, UnsafeNoFsync: true, ZapLogger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// Client returns a clientv3 client for endpoint, closed at cleanup.
func Client(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// NATS starts a NATS server with JetStream file storage in a temporary directory.
func NATS(t testing.TB) *server.Server {
	t.Helper()
	return NATSIn(t, t.TempDir())
}

// NATSIn starts (or restarts) a NATS server with JetStream storage in dir.
func NATSIn(t testing.TB, dir string) *server.Server {
	t.Helper()
	ns, err := embedded.StartNATS(embedded.NATSOptions{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// Conn connects to a NATS server, closed at cleanup.
func Conn(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Context returns a context bounded by d, canceled at cleanup. Tests use it to make sure nothing
// waits forever.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// JetStream opens a NATS connection of its own (closed at cleanup) and a JetStream context on
// it. Tests that kill a component close its connection to cut it off abruptly.
func JetStream(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc := Conn(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// EventLog opens the default event log stream through js, creating it if needed.
func EventLog(ctx context.Context, t testing.TB, js jetstream.JetStream) *eventlog.Log {
	t.Helper()
	l, err := eventlog.Ensure(ctx, js, eventlog.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// RootPassword is the password EnableAuth gives etcd's root user.
const RootPassword = "secret"

// Reader is an etcd user EnableAuth creates, allowed to read [Key, End) (End "": Key alone).
type Reader struct {
	Name, Password, Key, End string
}

// EnableAuth turns etcd's auth on through c (a client without credentials): a root user with
// RootPassword, and each reader with a role of its own allowed to read its range.
func EnableAuth(ctx context.Context, t testing.TB, c *clientv3.Client, readers ...Reader) {
	t.Helper()
	steps := []func() error{
		func() error { _, err := c.RoleAdd(ctx, "root"); return err },
		func() error { _, err := c.UserAdd(ctx, "root", RootPassword); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
	}
	for _, r := range readers {
		role := r.Name + "-reader"
		steps = append(steps,
			func() error { _, err := c.RoleAdd(ctx, role); return err },
			func() error {
				_, err := c.RoleGrantPermission(ctx, role, r.Key, r.End, clientv3.PermissionType(clientv3.PermRead))
				return err
			},
			func() error { _, err := c.UserAdd(ctx, r.Name, r.Password); return err },
			func() error { _, err := c.UserGrantRole(ctx, r.Name, role); return err })
	}
	steps = append(steps, func() error { _, err := c.AuthEnable(ctx); return err })
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
}
