package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/watchgate/watchgate/ingest"
	"github.com/watchgate/watchgate/internal/stack"
)

const devDescription = `Runs a whole watchgate deployment in one process, on loopback: an embedded etcd, an embedded
NATS JetStream server, one ingest worker and one gateway replica. Point etcdctl or any etcd v3
client at the gateway. Data lives in --data-dir; restarting on the same directory keeps every
key and the whole watch history. Stops cleanly on SIGINT (Ctrl-C) or SIGTERM.`

// readyWait bounds how long dev waits for the gateway to catch up with the event log before it
// prints its banner anyway.
const readyWait = 30 * time.Second

// devCmd is `watchgate dev`.
type devCmd struct {
	dataDir        string
	listenClient   string
	listenHTTP     string
	etcdClientAddr string
	etcdPeerAddr   string
	natsPort       int
	log            eventLogFlags
	gateway        gatewayFlags
	out            logOutputFlags
}

func (c *devCmd) register(fs *flag.FlagSet) {
	fs.StringVar(&c.dataDir, "data-dir", "./watchgate-data", "`directory` for etcd's and JetStream's data")
	fs.StringVar(&c.listenClient, "listen-client", "127.0.0.1:2379", "`host:port` where the gateway serves etcd's gRPC API")
	fs.StringVar(&c.listenHTTP, "listen-http", "127.0.0.1:9379", "`host:port` serving /healthz, /readyz and /metrics, or off")
	fs.StringVar(&c.etcdClientAddr, "etcd-client-addr", "127.0.0.1:12379", "`host:port` of the embedded etcd's client listener")
	fs.StringVar(&c.etcdPeerAddr, "etcd-peer-addr", "127.0.0.1:12380", "`host:port` of the embedded etcd's peer listener")
	fs.IntVar(&c.natsPort, "nats-port", 14222, "`port` of the embedded NATS server on 127.0.0.1; -1 picks a free one")
	c.log.register(fs, true, false)
	c.gateway.register(fs)
	c.out.register(fs)
}

func (c *devCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	lg, tel, err := startTelemetry(stderr, c.out)
	if err != nil {
		return err
	}
	defer tel.Close()

	gwo := c.gateway.options()
	gwo.Meter = tel.Meter
	st, err := stack.Start(ctx, stack.Options{
		DataDir:        c.dataDir,
		ClientAddr:     c.listenClient,
		HTTPAddr:       c.listenHTTP,
		EtcdClientAddr: c.etcdClientAddr,
		EtcdPeerAddr:   c.etcdPeerAddr,
		NATSPort:       c.natsPort,
		Gateway:        gwo,
		Ingest:         ingest.Options{Meter: tel.Meter},
		Log:            c.log.config(),
		Metrics:        tel.Handler,
		Logger:         lg,
		EtcdLogger:     zapLogger(lg.With("component", "etcd"), zapcore.ErrorLevel, etcdCloseNoise),
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped by a signal while starting
		}
		return err
	}
	defer st.Close()

	readyCtx, cancel := context.WithTimeout(ctx, readyWait)
	err = st.WaitReady(readyCtx)
	cancel()
	switch {
	case ctx.Err() != nil:
		lg.Info("interrupted while starting; shutting down")
		st.Close()
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		lg.Warn("gateway is still catching up with the event log; watches and reads wait until it has", "waited", readyWait.String())
	case err != nil:
		return err
	}
	printBanner(stdout, st, c.dataDir)

	<-ctx.Done()
	lg.Info("shutting down")
	st.Close()
	lg.Info("stopped")
	return nil
}

// etcdCloseNoise recognises what the embedded etcd logs as errors when it is closed on purpose
// (on shutdown, or after a failed start): each of its listeners reports "setting up serving
// from embedded etcd failed." with a closed-server or closed-connection error. Those go to the
// debug level; every other etcd error stays an error.
func etcdCloseNoise(e zapcore.Entry, fields map[string]any) bool {
	err, _ := fields["error"].(string)
	return strings.HasPrefix(e.Message, "setting up serving from embedded etcd failed") &&
		strings.Contains(strings.ToLower(err), "closed")
}

// printBanner tells a newcomer where everything listens and what to try first.
func printBanner(w io.Writer, st *stack.Stack, dataDir string) {
	endpoint := strings.TrimPrefix(st.ClientURL, "http://")
	metrics := "off"
	if st.HTTPURL != "" {
		metrics = st.HTTPURL + "/metrics"
	}
	if abs, err := filepath.Abs(dataDir); err == nil {
		dataDir = abs
	}
	fmt.Fprintf(w, `
watchgate dev is running.

  etcd API (gateway)   %s
  embedded etcd        %s
  NATS JetStream       %s
  metrics              %s
  data dir             %s

Try it (etcdctl or any etcd v3 client):
  etcdctl --endpoints=%s watch hello
  etcdctl --endpoints=%s put hello world

Press Ctrl-C to stop; the data dir keeps your keys and history for the next start.

`, st.ClientURL, st.Etcd.Endpoint, st.NATS.ClientURL(), metrics, dataDir, endpoint, endpoint)
}
