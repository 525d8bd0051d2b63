package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// testFlags is a fresh flag set of every kind the commands use.
type testFlags struct {
	DataDir  string
	Port     int
	MaxAge   time.Duration
	MaxBytes int64
}

func newTestFlagSet(v *testFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&v.DataDir, "data-dir", "./watchgate-data", "")
	fs.IntVar(&v.Port, "nats-port", 14222, "")
	fs.DurationVar(&v.MaxAge, "log-max-age", 0, "")
	fs.Int64Var(&v.MaxBytes, "log-max-bytes", 0, "")
	return fs
}

func TestApplyEnv(t *testing.T) {
	defaults := testFlags{DataDir: "./watchgate-data", Port: 14222}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    testFlags // checked when wantErr is empty
		wantErr string
	}{
		{name: "defaults", want: defaults},
		{
			name: "env fills unset flags",
			env: map[string]string{
				"WATCHGATE_DATA_DIR": "/env/dir", "WATCHGATE_NATS_PORT": "4333",
				"WATCHGATE_LOG_MAX_AGE": "1h30m", "WATCHGATE_LOG_MAX_BYTES": "1048576",
			},
			want: testFlags{DataDir: "/env/dir", Port: 4333, MaxAge: 90 * time.Minute, MaxBytes: 1 << 20},
		},
		{
			name: "flags beat env",
			args: []string{"--data-dir", "/flag/dir", "-nats-port=5000"},
			env:  map[string]string{"WATCHGATE_DATA_DIR": "/env/dir", "WATCHGATE_NATS_PORT": "4333", "WATCHGATE_LOG_MAX_AGE": "5s"},
			want: testFlags{DataDir: "/flag/dir", Port: 5000, MaxAge: 5 * time.Second},
		},
		{
			name: "a flag set to its default still beats env",
			args: []string{"--nats-port=14222"},
			env:  map[string]string{"WATCHGATE_NATS_PORT": "4333"},
			want: defaults,
		},
		{
			name: "empty env counts as unset",
			env:  map[string]string{"WATCHGATE_DATA_DIR": "", "WATCHGATE_NATS_PORT": ""},
			want: defaults,
		},
		{
			name: "other prefixes and spellings are ignored",
			env:  map[string]string{"DATA_DIR": "/x", "WATCHGATE_DATA-DIR": "/y", "watchgate_data_dir": "/z", "WATCHGATE_NATSPORT": "1"},
			want: defaults,
		},
		{
			name:    "bad env value names the variable",
			env:     map[string]string{"WATCHGATE_NATS_PORT": "many"},
			wantErr: `invalid value "many" for WATCHGATE_NATS_PORT`,
		},
		{
			name: "bad env value of a flag given on the command line is never read",
			args: []string{"--log-max-age=1m"},
			env:  map[string]string{"WATCHGATE_LOG_MAX_AGE": "forever"},
			want: testFlags{DataDir: "./watchgate-data", Port: 14222, MaxAge: time.Minute},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got testFlags
			fs := newTestFlagSet(&got)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			err := applyEnv(fs, envPrefix, lookup)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("applyEnv: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("applyEnv error = %v, want one containing %q", err, tt.wantErr)
			case tt.wantErr != "":
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("flags (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEnvName(t *testing.T) {
	for flagName, want := range map[string]string{
		"data-dir":             "WATCHGATE_DATA_DIR",
		"stream":               "WATCHGATE_STREAM",
		"advertise-client-url": "WATCHGATE_ADVERTISE_CLIENT_URL",
	} {
		if got := envName(envPrefix, flagName); got != want {
			t.Errorf("envName(%q) = %q, want %q", flagName, got, want)
		}
	}
}

// TestCommandFlags checks each command's flag set: the flags the brief promises exist with
// their defaults, and --help documents every flag and its environment variable.
func TestCommandFlags(t *testing.T) {
	shared := map[string]string{"stream": "WATCHGATE", "log-format": "text", "log-level": "info"}
	limits := map[string]string{"log-max-age": "0s", "log-max-bytes": "0"}
	tuning := map[string]string{
		"history-revisions": "10000", "history-bytes": "67108864", "watch-send-buffer": "256", "watch-send-bytes": "1048576", "watch-progress-notify-interval": "10m0s",
		"max-watch-streams": "0", "max-watchers": "0", "max-watchers-per-stream": "0",
		"max-request-bytes": "1572864", "advertise-client-url": "",
		"cache-prefixes": "", "cache-max-bytes": "2147483648", "cache-wait": "3s", "response-cache-bytes": "67108864",
		"rate-limit": "0", "rate-limit-burst": "0", "max-concurrent-expensive": "0", "max-range-response-bytes": "0",
	}
	upstream := map[string]string{"etcd-endpoints": "http://127.0.0.1:2379", "nats-url": "nats://127.0.0.1:4222"}
	want := map[string][]map[string]string{
		"dev": {shared, limits, tuning, {
			"data-dir": "./watchgate-data", "listen-client": "127.0.0.1:2379", "listen-http": "127.0.0.1:9379",
			"etcd-client-addr": "127.0.0.1:12379", "etcd-peer-addr": "127.0.0.1:12380", "nats-port": "14222",
		}},
		"ingest": {shared, limits, upstream, {"log-replicas": "1", "listen-http": "127.0.0.1:9380",
			"ack-timeout": "3s", "election": "true", "election-endpoints": "", "election-prefix": "", "election-ttl": "5s",
			"standby-sync-interval": "5s", "name": ""}},
		"gateway": {shared, tuning, upstream, {"listen-client": "127.0.0.1:2379", "listen-http": "127.0.0.1:9379", "shutdown-timeout": "10s"}},
		// bench without a scenario has only its common flags; TestRunMainUsage covers a scenario's.
		"bench": {{
			"targets": "etcd,grpcproxy,watchgate", "endpoints": "", "dir": "", "fsync": "false",
			"stall-timeout": "15s", "profile-dir": "", "json": "false",
		}},
	}
	for _, sc := range subcommands {
		t.Run(sc.name, func(t *testing.T) {
			fs := flag.NewFlagSet(sc.name, flag.ContinueOnError)
			sc.newCmd().register(fs)
			wantDefaults := map[string]string{}
			for _, m := range want[sc.name] {
				for k, v := range m {
					wantDefaults[k] = v
				}
			}
			gotDefaults := map[string]string{}
			fs.VisitAll(func(f *flag.Flag) { gotDefaults[f.Name] = f.DefValue })
			if diff := cmp.Diff(wantDefaults, gotDefaults); diff != "" {
				t.Errorf("flags and defaults (-want +got):\n%s", diff)
			}

			var help bytes.Buffer
			fs.SetOutput(&help)
			printUsage(fs, sc.name, sc.description)
			fs.VisitAll(func(f *flag.Flag) {
				if !strings.Contains(help.String(), "--"+f.Name+" ") && !strings.Contains(help.String(), "--"+f.Name+"\n") {
					t.Errorf("--help does not mention --%s", f.Name)
				}
				if !strings.Contains(help.String(), envName(envPrefix, f.Name)) {
					t.Errorf("--help does not mention %s", envName(envPrefix, f.Name))
				}
			})
		})
	}
}

// TestRunMainUsage checks dispatch, help and exit codes without starting anything.
func TestRunMainUsage(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "no args lists commands", wantCode: 1, wantStderr: "Commands:"},
		{name: "help lists commands", args: []string{"help"}, wantStdout: "gateway"},
		{name: "help of a command", args: []string{"help", "ingest"}, wantStdout: "--etcd-endpoints"},
		{name: "--help of a command", args: []string{"dev", "--help"}, wantStdout: "WATCHGATE_DATA_DIR"},
		{name: "unknown command", args: []string{"serve"}, wantCode: 1, wantStderr: `unknown command "serve"`},
		{name: "unknown flag", args: []string{"gateway", "--bogus"}, wantCode: 1, wantStderr: "watchgate gateway --help"},
		{name: "stray argument", args: []string{"dev", "extra"}, wantCode: 1, wantStderr: "unexpected arguments"},
		{name: "bench lists scenarios", args: []string{"bench", "--help"}, wantStdout: "watch-resume"},
		{name: "bench scenario flags", args: []string{"bench", "watch-fanout", "--help"}, wantStdout: "Usage: watchgate bench watch-fanout [flags]"},
		{name: "help of bench", args: []string{"help", "bench"}, wantStdout: "watchgate bench <scenario>"},
		{name: "bench unknown scenario", args: []string{"bench", "watch-everything"}, wantCode: 1, wantStderr: `unknown scenario "watch-everything"`},
		{name: "bench without scenario", args: []string{"bench"}, wantCode: 1, wantStderr: "missing scenario"},
		{name: "bench bad size", args: []string{"bench", "watch-fanout", "--watchers", "0"}, wantCode: 1, wantStderr: "must be positive"},
		{name: "bench unknown target", args: []string{"bench", "watch-idle", "--targets", "etcd,zk"}, wantCode: 1, wantStderr: `unknown target "zk"`},
		{
			name: "bad env value", args: []string{"ingest"}, env: map[string]string{"WATCHGATE_LOG_REPLICAS": "three"},
			wantCode: 1, wantStderr: "WATCHGATE_LOG_REPLICAS",
		},
		{
			name: "bad log format from env", args: []string{"gateway"}, env: map[string]string{"WATCHGATE_LOG_FORMAT": "xml"},
			wantCode: 1, wantStderr: "--log-format",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			lookup := func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			// A cancelled context: a command that got past its flags would stop at once.
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			code := runMain(ctx, tt.args, lookup, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d (stderr: %s)", code, tt.wantCode, stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.wantStdout) {
				t.Errorf("stdout %q does not contain %q", stdout.String(), tt.wantStdout)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}
