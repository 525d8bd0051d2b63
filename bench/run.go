package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Config is how a scenario is run, whatever the scenario.
type Config struct {
	// Targets to measure, in order (see AllTargets). Default: all of them.
	Targets []string
	// Endpoints, if set, replaces Targets with already running servers: name → etcd API
	// endpoint ("127.0.0.1:2379" or "http://..."). Nothing is started, and the server-side
	// figures (CPU, memory) are unknown.
	Endpoints map[string]string
	// Dir is where the targets keep their data. Default: a temporary directory, removed after.
	Dir string
	// Fsync makes etcd fsync its WAL. Default off: the comparison is between tiers on the same
	// etcd, and disk noise would only blur it.
	Fsync bool
	// StallTimeout is how long a target may make no progress before its row is reported as
	// stalled with the figures it reached. Default 15 s.
	StallTimeout time.Duration
	// Progress, if set, receives a line every few seconds during long phases.
	Progress io.Writer
	// ProfileDir, if set, receives a CPU profile of every server process over each measured
	// interval (<scenario>-<target>-<role>.pprof), for `go tool pprof -top`.
	ProfileDir string
}

// Scenario is a workload with its sizes. The scenario types in this package implement it.
type Scenario interface {
	// Name is the scenario's command-line name.
	Name() string
	title() string
	params() map[string]any
	columns() []Column
	validate() error
	// run measures one target. d's tier is not started yet: run starts it (after preparing
	// etcd's data, if the scenario needs the tier to find a backlog).
	run(ctx context.Context, r *runner, d *deployment) []Row
}

// Run measures s on every target of cfg, one after the other, each on a fresh etcd.
func Run(ctx context.Context, s Scenario, cfg Config) (*Report, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = 15 * time.Second
	}
	targets := cfg.Targets
	if len(targets) == 0 {
		targets = AllTargets
	}
	if len(cfg.Endpoints) > 0 {
		targets = nil
		for name := range cfg.Endpoints {
			targets = append(targets, name)
		}
		slices.Sort(targets)
	} else {
		for _, t := range targets {
			if !slices.Contains(AllTargets, t) {
				return nil, fmt.Errorf("unknown target %q (want one of %s)", t, strings.Join(AllTargets, ", "))
			}
		}
	}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "watchgate-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		cfg.Dir = dir
	}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}

	rep := &Report{Scenario: s.Name(), Title: s.title(), Params: s.params(), Machine: thisMachine(), Columns: s.columns()}
	for _, name := range targets {
		if ctx.Err() != nil {
			break
		}
		r := &runner{cfg: cfg, scenario: s.Name(), target: name}
		r.progressf("starting")
		var d *deployment
		var err error
		if ep, ok := cfg.Endpoints[name]; ok {
			d = &deployment{name: name, endpoint: ep}
		} else {
			d, err = startEtcd(ctx, name, filepath.Join(cfg.Dir, s.Name()+"-"+name), cfg.Fsync)
		}
		if err != nil {
			rep.Rows = append(rep.Rows, Row{Target: name, Status: StatusFailed, Error: err.Error()})
			continue
		}
		rows := s.run(ctx, r, d)
		d.close()
		rep.Rows = append(rep.Rows, rows...)
	}
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	return rep, nil
}

// runner carries what a scenario needs while it measures one target.
type runner struct {
	cfg      Config
	scenario string
	target   string

	mu       sync.Mutex
	lastLine time.Time
}

// progressf writes a progress line, at most one every 5 s unless it is the first.
func (r *runner) progressf(format string, args ...any) {
	if r.cfg.Progress == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.lastLine.IsZero() && time.Since(r.lastLine) < 5*time.Second {
		return
	}
	r.lastLine = time.Now()
	fmt.Fprintf(r.cfg.Progress, "%s %s: %s\n", r.scenario, r.target, fmt.Sprintf(format, args...))
}

// errStalled reports a target that stopped making progress.
var errStalled = errors.New("stalled")

// await polls count every 20 ms until it reaches want. It fails with errStalled if the count
// stays the same for the stall timeout, and with ctx's error if ctx ends first.
func (r *runner) await(ctx context.Context, what string, count func() int64, want int64) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	last, lastChange := count(), time.Now()
	for last < want {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		n := count()
		if n != last {
			last, lastChange = n, time.Now()
		}
		if time.Since(lastChange) > r.cfg.StallTimeout {
			return fmt.Errorf("%w: %s at %d of %d, no progress for %s", errStalled, what, last, want, r.cfg.StallTimeout)
		}
		r.progressf("%s %d/%d", what, last, want)
	}
	return nil
}

// profile starts a CPU profile of each of d's processes, if a profile directory was asked
// for. The returned function stops them and writes <scenario>-<target>[-<case>]-<role>.pprof
// each.
func (r *runner) profile(ctx context.Context, d *deployment, kase string) (stop func()) {
	if r.cfg.ProfileDir == "" {
		return func() {}
	}
	var stops []func() error
	for _, c := range d.procs() {
		name := r.scenario + "-" + r.target
		if kase != "" {
			name += "-" + kase
		}
		path := filepath.Join(r.cfg.ProfileDir, name+"-"+c.role+".pprof")
		s, err := c.startCPUProfile(ctx, path)
		if err != nil {
			r.warnf("profile of %s: %v", c.role, err)
			continue
		}
		stops = append(stops, s)
	}
	return func() {
		for _, s := range stops {
			if err := s(); err != nil {
				r.warnf("profile: %v", err)
			}
		}
	}
}

// warnf reports a problem that does not invalidate the figures.
func (r *runner) warnf(format string, args ...any) {
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, "%s %s: %s\n", r.scenario, r.target, fmt.Sprintf(format, args...))
	}
}

// tieredRow starts d's tier, then measures the target into a single row.
func tieredRow(ctx context.Context, d *deployment, measure func(v map[string]float64) error) []Row {
	if err := d.startTier(ctx); err != nil {
		return failed(d.name, err)
	}
	row := Row{Target: d.name, Values: map[string]float64{}}
	finish(&row, measure(row.Values))
	return []Row{row}
}

// failed is the row of a target that could not be measured at all.
func failed(target string, err error) []Row {
	return []Row{{Target: target, Status: StatusFailed, Error: err.Error()}}
}

// finish sets a row's status from the error that ended its measurement.
func finish(row *Row, err error) {
	switch {
	case err == nil:
		row.Status = StatusOK
	case errors.Is(err, errStalled):
		row.Status, row.Error = StatusStalled, err.Error()
	default:
		row.Status, row.Error = StatusFailed, err.Error()
	}
}
