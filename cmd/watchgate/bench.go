package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/watchgate/watchgate/bench"
)

const benchDescription = `Measures one scenario on direct etcd, on etcd's gRPC proxy and on watchgate, one after the other
in the same run on this machine, with the same clientv3 load generator, and prints a table with
each figure's ratio against direct etcd (or JSON with --json). Each target gets a fresh etcd;
every server runs in a process of its own, so its CPU time and memory are measured apart from
the load generator's ("client CPU %" is the generator's share of all cores: near 100 means the
client, not the server, was the limit). With --endpoints the load goes to servers already
running instead, and server figures are not measured.

Scenarios:
  watch-fanout   W watchers on one key (or prefix) while a writer puts at a steady rate:
                 delivered events/s, put-to-event latency, events lost
  watch-idle     W idle watchers on distinct keys: memory per watcher, time to create them
  watch-churn    watchers created and canceled at a rate while events flow: create latency
  watch-resume   W watchers reconnect at once from an old revision: time until caught up
  range          GET of one key and LIST of a prefix, linearizable and serializable
  ingest         revisions/s from etcd to the consumer at saturation, and lag at a steady rate
  cache-load     watchgate only: a replica's start on K keys (until ready) and its keyspace
                 cache's heap per key

Run 'watchgate bench <scenario> --help' for the scenario's sizes.`

// benchCmd is `watchgate bench <scenario>`.
type benchCmd struct {
	scenario     string
	build        func() bench.Scenario // the scenario with its flags' values
	targets      string
	endpoints    string
	dir          string
	fsync        bool
	stallTimeout time.Duration
	profileDir   string
	json         bool
}

// benchScenarios registers each scenario's size flags, defaulting to its default sizes, and
// returns a function building the scenario from their values.
var benchScenarios = map[string]func(fs *flag.FlagSet) func() bench.Scenario{
	"watch-fanout": func(fs *flag.FlagSet) func() bench.Scenario {
		s := bench.DefaultWatchFanout
		watcherFlags(fs, &s.Watchers, &s.Streams, &s.Conns)
		fs.IntVar(&s.Keys, "keys", s.Keys, "1: watch and put one key; more: watch a prefix, puts cycle over this many keys")
		fs.IntVar(&s.Rate, "rate", s.Rate, "puts per second")
		fs.IntVar(&s.ValueSize, "value-size", s.ValueSize, "value size in bytes (at least 16)")
		fs.DurationVar(&s.Duration, "duration", s.Duration, "how long the writer runs")
		return func() bench.Scenario { return s }
	},
	"watch-idle": func(fs *flag.FlagSet) func() bench.Scenario {
		s := bench.DefaultWatchIdle
		watcherFlags(fs, &s.Watchers, &s.Streams, &s.Conns)
		return func() bench.Scenario { return s }
	},
	"watch-churn": func(fs *flag.FlagSet) func() bench.Scenario {
		s := bench.DefaultWatchChurn
		watcherFlags(fs, &s.Live, &s.Streams, &s.Conns)
		fs.IntVar(&s.Churn, "churn", s.Churn, "watchers created (and as many canceled) per second")
		fs.IntVar(&s.Rate, "rate", s.Rate, "puts per second on the watched prefix")
		fs.DurationVar(&s.Duration, "duration", s.Duration, "how long the churn runs")
		return func() bench.Scenario { return s }
	},
	"watch-resume": func(fs *flag.FlagSet) func() bench.Scenario {
		s := bench.DefaultWatchResume
		watcherFlags(fs, &s.Watchers, &s.Streams, &s.Conns)
		fs.IntVar(&s.History, "history", s.History, "revisions each watcher replays")
		fs.IntVar(&s.Keys, "keys", s.Keys, "keys of the watched prefix the history is spread over")
		fs.IntVar(&s.ValueSize, "value-size", s.ValueSize, "value size in bytes")
		return func() bench.Scenario { return s }
	},
	"range": func(fs *flag.FlagSet) func() bench.Scenario {
		s := bench.DefaultRange
		fs.IntVar(&s.Keys, "keys", s.Keys, "keys under the listed prefix")
		fs.IntVar(&s.ValueSize, "value-size", s.ValueSize, "value size in bytes")
		fs.IntVar(&s.Clients, "clients", s.Clients, "concurrent clients, one connection and one request in flight each")
		fs.DurationVar(&s.Duration, "duration", s.Duration, "how long each case runs")
		fs.BoolVar(&s.Raw, "raw", s.Raw, "clients count each response's keys without decoding it, so the servers, not the clients' decoding, are the limit")
		cases := fs.String("cases", strings.Join(bench.RangeCases, ","), "comma-separated cases to run")
		return func() bench.Scenario {
			s.Cases = splitList(*cases)
			return s
		}
	},
	"ingest": func(fs *flag.FlagSet) func() bench.Scenario {
		s := bench.DefaultIngest
		fs.IntVar(&s.Backlog, "backlog", s.Backlog, "revisions written before the tier starts")
		fs.IntVar(&s.Rate, "rate", s.Rate, "puts per second in the steady phase")
		fs.DurationVar(&s.Duration, "duration", s.Duration, "length of the steady phase")
		fs.IntVar(&s.ValueSize, "value-size", s.ValueSize, "value size in bytes")
		return func() bench.Scenario { return s }
	},
	"cache-load": func(fs *flag.FlagSet) func() bench.Scenario {
		s := bench.DefaultCacheLoad
		fs.IntVar(&s.Keys, "keys", s.Keys, "keys written to etcd before the replica starts")
		fs.IntVar(&s.ValueSize, "value-size", s.ValueSize, "value size in bytes")
		return func() bench.Scenario { return s }
	},
}

// splitList splits a comma-separated flag value, dropping blanks.
func splitList(s string) []string {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func watcherFlags(fs *flag.FlagSet, watchers, streams, conns *int) {
	fs.IntVar(watchers, "watchers", *watchers, "number of watchers")
	fs.IntVar(streams, "streams", *streams, "gRPC watch streams the watchers are spread over")
	fs.IntVar(conns, "conns", *conns, "client connections the streams are spread over")
}

// takeArgs takes the scenario name off the front of the arguments.
func (c *benchCmd) takeArgs(args []string) ([]string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return args, nil // no scenario: only --help makes sense, which lists them
	}
	if _, ok := benchScenarios[args[0]]; !ok {
		return nil, fmt.Errorf("unknown scenario %q (see watchgate bench --help)", args[0])
	}
	c.scenario = args[0]
	return args[1:], nil
}

func (c *benchCmd) usageName() string {
	if c.scenario == "" {
		return "<scenario>"
	}
	return c.scenario
}

func (c *benchCmd) register(fs *flag.FlagSet) {
	if build, ok := benchScenarios[c.scenario]; ok {
		c.build = build(fs)
	}
	fs.StringVar(&c.targets, "targets", strings.Join(bench.AllTargets, ","), "comma-separated `list` of targets to measure: etcd, grpcproxy, watchgate")
	fs.StringVar(&c.endpoints, "endpoints", "", "measure running servers instead: comma-separated `name=host:port` (a bare host:port is named \"external\")")
	fs.StringVar(&c.dir, "dir", "", "`directory` for the targets' data (default: a temporary one, removed afterwards)")
	fs.BoolVar(&c.fsync, "fsync", false, "make etcd fsync its WAL (off: disk noise is not what is compared)")
	fs.DurationVar(&c.stallTimeout, "stall-timeout", 15*time.Second, "report a target as stalled after this long without progress")
	fs.StringVar(&c.profileDir, "profile-dir", "", "save a CPU profile of every server process over each measured interval in this `directory`")
	fs.BoolVar(&c.json, "json", false, "print the report as JSON instead of a table")
}

func (c *benchCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	if c.build == nil {
		return errors.New("missing scenario (see watchgate bench --help)")
	}
	cfg := bench.Config{
		Dir: c.dir, Fsync: c.fsync, StallTimeout: c.stallTimeout, ProfileDir: c.profileDir, Progress: stderr,
	}
	cfg.Targets = splitList(c.targets)
	if c.endpoints != "" {
		cfg.Endpoints = map[string]string{}
		for _, ep := range splitList(c.endpoints) {
			name, addr, ok := strings.Cut(ep, "=")
			if !ok {
				name, addr = "external", name
			}
			cfg.Endpoints[name] = addr
		}
	}
	rep, err := bench.Run(ctx, c.build(), cfg)
	if rep != nil {
		if c.json {
			if werr := rep.WriteJSON(stdout); werr != nil {
				return werr
			}
		} else if werr := rep.WriteTable(stdout); werr != nil {
			return werr
		}
	}
	return err
}
