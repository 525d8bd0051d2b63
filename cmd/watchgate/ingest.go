package main

import (
	"context"
	"flag"
	"io"
	"net/http"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/ingest"
)

const ingestDescription = `Runs one ingest worker: it keeps one whole-keyspace watch on the etcd cluster at
--etcd-endpoints and appends one event log message per revision to the JetStream stream --stream
on --nats-url, creating the stream if needed and applying --log-max-age and --log-max-bytes to it.
It resumes after the log's last revision, so restarts lose and repeat nothing. Stops on SIGINT or
SIGTERM.`

// ingestCmd is `watchgate ingest`.
type ingestCmd struct {
	upstream   upstreamFlags
	log        eventLogFlags
	listenHTTP string
	out        logOutputFlags
}

func (c *ingestCmd) register(fs *flag.FlagSet) {
	c.upstream.register(fs)
	c.log.register(fs, true, true)
	fs.StringVar(&c.listenHTTP, "listen-http", "127.0.0.1:9380", "`host:port` serving /healthz and /metrics, or off")
	c.out.register(fs)
}

func (c *ingestCmd) run(ctx context.Context, _, stderr io.Writer) error {
	lg, tel, err := startTelemetry(stderr, c.out)
	if err != nil {
		return err
	}
	defer tel.Close()
	up, err := c.upstream.connect("ingest", lg)
	if err != nil {
		return err
	}
	defer up.Close()

	log, err := eventlog.Ensure(ctx, up.JS, c.log.config())
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped by a signal while starting
		}
		return err
	}
	ing, err := ingest.New(ingest.Options{
		Member: up.Member,
		Log:    log,
		Logger: lg.With("component", "ingest"),
		Meter:  tel.Meter,
	})
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("GET /metrics", tel.Handler)
	errc := make(chan error, 1)
	hs, httpURL, err := serveHTTP(c.listenHTTP, mux, errc)
	if err != nil {
		return err
	}
	defer shutdownHTTP(hs)

	lg.Info("ingest running", "etcd", c.upstream.endpoints(), "nats", c.upstream.natsURL,
		"stream", log.Stream(), "http", httpURL)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ing.Run(runCtx) }()
	select {
	case err = <-errc:
		cancel()
		<-done
		return err
	case err = <-done:
	}
	lg.Info("ingest stopped", "published", ing.Published())
	return err
}
