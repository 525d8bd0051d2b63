package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/ingest"
)

const ingestDescription = `Runs one ingest worker: it keeps one whole-keyspace watch on the etcd cluster at
--etcd-endpoints and appends one event log message per revision to the JetStream stream --stream
on --nats-url, creating the stream if needed and applying --log-max-age and --log-max-bytes to it.
It resumes after the log's last revision, so restarts lose and repeat nothing. Stops on SIGINT or
SIGTERM.

Run as many workers per stream as you like: they hold an election (in the etcd cluster, or the
one at --election-endpoints) and exactly one is active; the others stand by and take over once
the active one has been silent for --election-ttl. The election's keys live under
--election-prefix, so they appear in that cluster's keyspace and history.

"watchgate ingest status" prints the active worker, the standbys and the log's lag, then exits.`

// ingestCmd is `watchgate ingest` and `watchgate ingest status`.
type ingestCmd struct {
	status     bool // `watchgate ingest status`
	upstream   upstreamFlags
	log        eventLogFlags
	election   electionFlags
	listenHTTP string
	ackTimeout time.Duration
	out        logOutputFlags
}

// electionFlags configure the ingest election.
type electionFlags struct {
	on        bool
	endpoints string
	prefix    string
	ttl       time.Duration
	sync      time.Duration
	name      string
}

func (f *electionFlags) register(fs *flag.FlagSet, worker bool) {
	fs.StringVar(&f.endpoints, "election-endpoints", "", "client `URLs` of the etcd cluster holding the ingest election; empty means --etcd-endpoints")
	fs.StringVar(&f.prefix, "election-prefix", "", "the election's key `prefix`; empty means /watchgate/ingest/<stream>")
	if !worker {
		return
	}
	fs.BoolVar(&f.on, "election", true, "hold an election so that one worker per stream is active and the others stand by; false runs this worker always active")
	fs.DurationVar(&f.ttl, "election-ttl", 5*time.Second, "remove delay: a standby takes over once the active worker has been silent this `long`")
	fs.DurationVar(&f.sync, "standby-sync-interval", 5*time.Second, "how `often` a standby refreshes the log's tail and the member's revision it reports")
	fs.StringVar(&f.name, "name", "", "this worker's `name` in the election and status; empty means <hostname>-<pid>")
}

// prefixFor returns the election prefix for stream.
func (f *electionFlags) prefixFor(stream string) string {
	if f.prefix != "" {
		return f.prefix
	}
	return "/watchgate/ingest/" + stream
}

// takeArgs takes "status" off the front of the arguments.
func (c *ingestCmd) takeArgs(args []string) ([]string, error) {
	if len(args) > 0 && args[0] == "status" {
		c.status = true
		return args[1:], nil
	}
	return args, nil
}

func (c *ingestCmd) usageName() string {
	if c.status {
		return "status"
	}
	return "[status]"
}

func (c *ingestCmd) register(fs *flag.FlagSet) {
	c.upstream.register(fs)
	c.log.register(fs, !c.status, !c.status)
	c.election.register(fs, !c.status)
	if c.status {
		return
	}
	fs.StringVar(&c.listenHTTP, "listen-http", "127.0.0.1:9380", "`host:port` serving /healthz, /status and /metrics, or off")
	fs.DurationVar(&c.ackTimeout, "ack-timeout", ingest.DefaultAckTimeout, "how `long` the log may take to acknowledge a publish before ingest resumes from its tail (bounds the pause when the stream's leader is lost)")
	c.out.register(fs)
}

func (c *ingestCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	if c.status {
		return c.printStatus(ctx, stdout, stderr)
	}
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
	opts := ingest.Options{
		Member:     up.Member,
		Log:        log,
		AckTimeout: c.ackTimeout,
		Logger:     lg.With("component", "ingest"),
		Meter:      tel.Meter,
	}

	mux := http.NewServeMux()
	errc := make(chan error, 1)
	hs, httpURL, err := serveHTTP(c.listenHTTP, mux, errc)
	if err != nil {
		return err
	}
	defer shutdownHTTP(hs)

	if c.election.on {
		ec, err := c.electionClient(up.Member, lg)
		if err != nil {
			return err
		}
		if ec != up.Member {
			defer ec.Close()
		}
		opts.Election = &ingest.Election{
			Client:       ec,
			Prefix:       c.election.prefixFor(log.Stream()),
			TTL:          c.election.ttl,
			SyncInterval: c.election.sync,
			Name:         c.election.name,
			Address:      httpURL,
		}
	}
	ing, err := ingest.New(opts)
	if err != nil {
		return err
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("GET /metrics", tel.Handler)
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, err := ing.Status(r.Context())
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			json.NewEncoder(w).Encode(map[string]any{"status": st, "error": err.Error()})
			return
		}
		json.NewEncoder(w).Encode(st)
	})

	lg.Info("ingest running", "etcd", c.upstream.endpoints(), "nats", c.upstream.natsURL,
		"stream", log.Stream(), "http", httpURL, "election", c.election.on)
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

// electionClient returns the client of the cluster holding the election: member itself unless
// --election-endpoints names another.
func (c *ingestCmd) electionClient(member *clientv3.Client, lg *slog.Logger) (*clientv3.Client, error) {
	eps := splitList(c.election.endpoints)
	if len(eps) == 0 {
		return member, nil
	}
	ec, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second,
		Logger: zapLogger(lg.With("component", "election-client"), zapcore.WarnLevel, nil)})
	if err != nil {
		return nil, fmt.Errorf("election etcd client: %w", err)
	}
	return ec, nil
}

// printStatus is `watchgate ingest status`: it reads the election, the log's tail and the
// member's revision once and prints them.
func (c *ingestCmd) printStatus(ctx context.Context, stdout, stderr io.Writer) error {
	lg, tel, err := startTelemetry(stderr, logOutputFlags{format: "text", level: "error"})
	if err != nil {
		return err
	}
	defer tel.Close()
	up, err := c.upstream.connect("ingest status", lg)
	if err != nil {
		return err
	}
	defer up.Close()
	ec, err := c.electionClient(up.Member, lg)
	if err != nil {
		return err
	}
	if ec != up.Member {
		defer ec.Close()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	log, err := eventlog.Bind(ctx, up.JS, c.log.config())
	if err != nil {
		return err
	}
	st, err := ingest.ReadStatus(ctx, ingest.StatusSource{Log: log, Member: up.Member,
		Election: ec, Prefix: c.election.prefixFor(log.Stream())})
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, formatStatus(log.Stream(), st))
	return nil
}

// formatStatus renders an ingest status for a terminal.
func formatStatus(stream string, st ingest.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "stream %s: log at revision %d, member at %d, lag %d\n", stream, st.LogLast, st.MemberRevision, st.Lag)
	line := func(role string, c ingest.Candidate) {
		fmt.Fprintf(&b, "%-8s %s", role, c.Name)
		if c.Address != "" {
			fmt.Fprintf(&b, " (%s)", c.Address)
		}
		fmt.Fprintf(&b, ", in the election since %s\n", c.Since.Format(time.RFC3339))
	}
	if st.Active == nil {
		b.WriteString("active   none: no worker holds the election\n")
	} else {
		line("active", *st.Active)
	}
	for _, c := range st.Standbys {
		line("standby", c)
	}
	return b.String()
}
