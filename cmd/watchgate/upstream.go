package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
)

// upstream holds the connections ingest and gateway make to etcd and NATS.
type upstream struct {
	Member *clientv3.Client
	NATS   *nats.Conn
	JS     jetstream.JetStream
}

// connect opens a client of the etcd cluster and a NATS connection that reconnects forever.
// The etcd client dials lazily; NATS must answer now.
func (f *upstreamFlags) connect(name string, lg *slog.Logger) (*upstream, error) {
	eps := f.endpoints()
	if len(eps) == 0 {
		return nil, fmt.Errorf("--etcd-endpoints is empty")
	}
	u := &upstream{}
	var err error
	if u.Member, err = clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: 5 * time.Second,
		// One attempt per call: what a gateway passes through is its client's call, retried by
		// that client if it wants; a bad token retried here would cost etcd a hundred attempts.
		MaxUnaryRetries: 1,
		Logger:          zapLogger(lg.With("component", "etcd-client"), zapcore.WarnLevel, nil),
	}); err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	nlg := lg.With("component", "nats-client")
	if u.NATS, err = nats.Connect(f.natsURL,
		nats.Name("watchgate "+name),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				nlg.Warn("disconnected from NATS", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { nlg.Info("reconnected to NATS", "url", nc.ConnectedUrl()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { nlg.Error("NATS error", "err", err) }),
	); err != nil {
		u.Close()
		return nil, fmt.Errorf("nats %s: %w", f.natsURL, err)
	}
	if u.JS, err = jetstream.New(u.NATS); err != nil {
		u.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return u, nil
}

// Close closes whatever connect opened.
func (u *upstream) Close() {
	if u.NATS != nil {
		u.NATS.Close()
	}
	if u.Member != nil {
		u.Member.Close()
	}
}
