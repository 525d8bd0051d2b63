package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/watchgate/watchgate/eventlog"
	"github.com/watchgate/watchgate/gateway"
)

// envPrefix starts the name of every flag's environment variable.
const envPrefix = "WATCHGATE_"

// envName is the environment variable for flag name: prefix + the name in upper case, dashes
// as underscores ("data-dir" is WATCHGATE_DATA_DIR).
func envName(prefix, name string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applyEnv sets each flag of fs that the command line did not set from its environment variable
// (see envName), read through lookup. A flag given on the command line wins; an empty variable
// counts as unset. Values are parsed as on the command line; every bad one is reported.
func applyEnv(fs *flag.FlagSet, prefix string, lookup func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		name := envName(prefix, f.Name)
		v, ok := lookup(name)
		if !ok || v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("invalid value %q for %s: %w", v, name, err))
		}
	})
	return errors.Join(errs...)
}

const envFooter = `Every flag can also be set by the environment variable shown under it: WATCHGATE_ and the
flag's name in upper case, dashes as underscores. A flag on the command line wins over the
environment; an empty variable counts as unset.`

// printUsage writes a command's help: synopsis, description, every flag with its default and
// environment variable, and the environment footer.
func printUsage(fs *flag.FlagSet, name, description string) {
	w := fs.Output()
	fmt.Fprintf(w, "Usage: watchgate %s [flags]\n\n%s\n\nFlags:\n", name, description)
	fs.VisitAll(func(f *flag.Flag) {
		typ, text := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if typ != "" {
			fmt.Fprintf(w, " %s", typ)
		}
		fmt.Fprintf(w, "\n      %s", strings.ReplaceAll(text, "\n", "\n      "))
		switch {
		case f.DefValue == "" || f.DefValue == "0" || f.DefValue == "0s":
		case isString(f):
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		default:
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "\n      env %s\n", envName(envPrefix, f.Name))
	})
	fmt.Fprintf(w, "\n%s\n", envFooter)
}

func isString(f *flag.Flag) bool {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return false
	}
	_, ok = g.Get().(string)
	return ok
}

// logOutputFlags choose how the process logs (to stderr, with log/slog).
type logOutputFlags struct {
	format, level string
}

func (f *logOutputFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.format, "log-format", "text", "log format on stderr: `text` or json")
	fs.StringVar(&f.level, "log-level", "info", "minimum log `level`: debug, info, warn or error")
}

// eventLogFlags name the event log's stream and, where the command creates it, its limits.
type eventLogFlags struct {
	stream   string
	maxAge   time.Duration
	maxBytes int64
	replicas int
}

// register adds --stream and, if limits, the flags that shape the stream when it is created or
// opened by ingest; replicas adds --log-replicas (pointless on dev's single NATS server).
func (f *eventLogFlags) register(fs *flag.FlagSet, limits, replicas bool) {
	fs.StringVar(&f.stream, "stream", "WATCHGATE", "JetStream `name` of the event log stream")
	f.replicas = 1
	if !limits {
		return
	}
	fs.DurationVar(&f.maxAge, "log-max-age", 0, "drop event log revisions older than this `duration`; 0 keeps them forever")
	fs.Int64Var(&f.maxBytes, "log-max-bytes", 0, "drop the oldest event log revisions beyond this many `bytes`; 0 is unlimited")
	if replicas {
		fs.IntVar(&f.replicas, "log-replicas", 1, "replication `factor` of the event log stream")
	}
}

func (f *eventLogFlags) config() eventlog.Config {
	return eventlog.Config{Stream: f.stream, Replicas: f.replicas, MaxAge: f.maxAge, MaxBytes: f.maxBytes}
}

// gatewayFlags tune a gateway replica.
type gatewayFlags struct {
	advertise        string
	historyRevisions int
	historyBytes     int64
	watchSendBuffer  int
	watchSendBytes   int64
	progressInterval time.Duration
	maxStreams       int
	maxWatchers      int
	maxPerStream     int
	maxRequestBytes  int
	cachePrefixes    string
	cacheMaxBytes    int64
	cacheWait        time.Duration
	responseBytes    int64
	protect          protectionFlags
}

func (f *gatewayFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.advertise, "advertise-client-url", "", "`URL` that MemberList reports for this gateway (default http:// and the --listen-client address)")
	fs.IntVar(&f.historyRevisions, "history-revisions", 10000, "most revisions kept in the in-memory watch history")
	fs.Int64Var(&f.historyBytes, "history-bytes", 64<<20, "encoded `bytes` kept in the in-memory watch history")
	fs.IntVar(&f.watchSendBuffer, "watch-send-buffer", 256, "responses a watch stream queues before its watchers fall back to catching up from history")
	fs.Int64Var(&f.watchSendBytes, "watch-send-bytes", 1<<20, "event `bytes` a watch stream queues before its watchers fall back to catching up from history")
	fs.DurationVar(&f.progressInterval, "watch-progress-notify-interval", 10*time.Minute, "how often watchers created with progress_notify that received no events get the current revision, as etcd's flag of that name (at least 100ms)")
	fs.IntVar(&f.maxStreams, "max-watch-streams", 0, "most watch streams open on this replica; 0 for no limit")
	fs.IntVar(&f.maxWatchers, "max-watchers", 0, "most watchers on this replica; 0 for no limit")
	fs.IntVar(&f.maxPerStream, "max-watchers-per-stream", 0, "most watchers on one watch stream; 0 for no limit")
	fs.IntVar(&f.maxRequestBytes, "max-request-bytes", 3<<19, "largest client request in `bytes`, as etcd's --max-request-bytes")
	fs.StringVar(&f.cachePrefixes, "cache-prefixes", "", "comma-separated key `prefixes` the keyspace cache holds and serves reads of (default every key)")
	fs.Int64Var(&f.cacheMaxBytes, "cache-max-bytes", 2<<30, "memory `bytes` the keyspace cache may take; a replica whose prefixes do not fit fails at startup; negative disables the cache")
	fs.DurationVar(&f.cacheWait, "cache-wait", 3*time.Second, "how long a linearizable read waits for the cache to reach etcd's revision before it is passed to etcd")
	fs.Int64Var(&f.responseBytes, "response-cache-bytes", 64<<20, "encoded range response `bytes` kept for identical requests; negative disables")
	f.protect.register(fs)
}

// options returns the gateway options the flags set; the caller fills in connections, logger
// and meter.
func (f *gatewayFlags) options() gateway.Options {
	o := gateway.Options{
		AdvertiseClientURL:          f.advertise,
		HistoryRevisions:            f.historyRevisions,
		HistoryBytes:                f.historyBytes,
		WatchSendBuffer:             f.watchSendBuffer,
		WatchSendBytes:              f.watchSendBytes,
		WatchProgressNotifyInterval: f.progressInterval,
		MaxWatchStreams:             f.maxStreams,
		MaxWatchers:                 f.maxWatchers,
		MaxWatchersPerStream:        f.maxPerStream,
		MaxRequestBytes:             f.maxRequestBytes,
		CachePrefixes:               splitList(f.cachePrefixes),
		CacheMaxBytes:               f.cacheMaxBytes,
		CacheWait:                   f.cacheWait,
		ResponseCacheBytes:          f.responseBytes,
	}
	f.protect.apply(&o)
	return o
}

// upstreamFlags locate the etcd cluster and NATS servers that ingest and gateway connect to.
type upstreamFlags struct {
	etcdEndpoints, natsURL string
}

func (f *upstreamFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.etcdEndpoints, "etcd-endpoints", "http://127.0.0.1:2379", "comma-separated client `URLs` of the etcd member cluster")
	fs.StringVar(&f.natsURL, "nats-url", "nats://127.0.0.1:4222", "NATS server `URLs` (comma-separated) of the JetStream event log")
}

// endpoints splits --etcd-endpoints, dropping blanks.
func (f *upstreamFlags) endpoints() []string { return splitList(f.etcdEndpoints) }
