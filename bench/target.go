package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/procfs"
)

// Target names.
const (
	TargetEtcd      = "etcd"      // clients talk to etcd directly
	TargetGRPCProxy = "grpcproxy" // clients talk to etcd's gRPC proxy in front of etcd
	TargetWatchgate = "watchgate" // clients talk to a watchgate gateway (ingest and NATS behind it)
)

// AllTargets is the default --targets list, in the order rows are printed.
var AllTargets = []string{TargetEtcd, TargetGRPCProxy, TargetWatchgate}

// deployment is one target under test: the endpoint clients use and the processes serving it.
type deployment struct {
	name     string
	endpoint string // what the load generator's clients dial
	etcd     *child // nil for an external target
	tier     *child // the proxy or watchgate process; nil for direct etcd and external targets
	dir      string
	fsync    bool
}

// startEtcd starts a fresh etcd for target name in dir. The tier in front of it, if any, is
// started by startTier, so a scenario can prepare etcd's data first.
func startEtcd(ctx context.Context, name, dir string, fsync bool) (*deployment, error) {
	d := &deployment{name: name, dir: dir, fsync: fsync}
	e, err := spawn(ctx, childSpec{Role: roleEtcd, Dir: filepath.Join(dir, "etcd"), Fsync: fsync})
	if err != nil {
		return nil, err
	}
	d.etcd, d.endpoint = e, e.ready.Endpoint
	return d, nil
}

// startTier starts the proxy or gateway in front of d's etcd and points d's endpoint at it.
func (d *deployment) startTier(ctx context.Context) error {
	var role string
	switch {
	case d.etcd == nil:
		return nil // an external target: already serving
	case d.name == TargetEtcd:
		return nil
	case d.name == TargetGRPCProxy:
		role = roleGRPCProxy
	case d.name == TargetWatchgate:
		role = roleWatchgate
	default:
		return fmt.Errorf("unknown target %q", d.name)
	}
	t, err := spawn(ctx, childSpec{Role: role, Dir: filepath.Join(d.dir, role), Upstream: d.etcd.ready.Endpoint})
	if err != nil {
		return err
	}
	d.tier, d.endpoint = t, t.ready.Endpoint
	return nil
}

// startReplica starts one more gateway replica of d's watchgate tier, in a process of its own
// (named name, under d's directory): in front of the same etcd, following the same event log.
// It returns once the replica is ready: caught up with the log and, unless cacheMaxBytes is
// negative, its keyspace cache loaded. profile, if set, receives a CPU profile of the replica
// from its start until then. The caller stops the replica.
func (d *deployment) startReplica(ctx context.Context, name string, cacheMaxBytes int64, profile string) (*child, error) {
	if d.name != TargetWatchgate || d.etcd == nil || d.tier == nil {
		return nil, fmt.Errorf("%s: no watchgate tier started here to add a replica to", d.name)
	}
	return spawn(ctx, childSpec{
		Role: roleGateway, Dir: filepath.Join(d.dir, name), Upstream: d.etcd.ready.Endpoint,
		NATS: d.tier.ready.NATS, CacheMaxBytes: cacheMaxBytes, CPUProfile: profile,
	})
}

// etcdEndpoint is where writes that must bypass the tier (data preparation) go.
func (d *deployment) etcdEndpoint() string {
	if d.etcd != nil {
		return d.etcd.ready.Endpoint
	}
	return d.endpoint
}

func (d *deployment) close() {
	if d.tier != nil {
		d.tier.stop()
	}
	if d.etcd != nil {
		d.etcd.stop()
	}
}

// procs are the deployment's server processes, etcd first.
func (d *deployment) procs() []*child {
	var ps []*child
	for _, c := range []*child{d.etcd, d.tier} {
		if c != nil {
			ps = append(ps, c)
		}
	}
	return ps
}

// usage is the server-side cost of a measured interval.
type usage struct {
	known          bool    // false for external targets (no process to read)
	cpu, etcdCPU   float64 // CPU seconds: all server processes, and etcd's alone
	peakRSS        float64 // bytes: sum over processes of each one's peak resident set
	etcdPeakRSS    float64
	clientCPU      float64 // CPU seconds the load generator used
	clientCoreFrac float64 // clientCPU over (wall time × cores): 1 means the machine was all client
	wall           time.Duration
}

// meter measures a deployment's processes over an interval: CPU time from start to stop, and
// resident memory sampled every 100 ms in between (so the peak is the interval's, not the
// process lifetime's).
type meter struct {
	d        *deployment
	procs    []procfs.Proc
	cpu0     []float64
	client0  float64
	t0       time.Time
	stopOnce sync.Once
	stopc    chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	peak     []float64
}

func startMeter(d *deployment) *meter {
	m := &meter{d: d, t0: time.Now(), client0: selfCPU(), stopc: make(chan struct{}), done: make(chan struct{})}
	for _, c := range d.procs() {
		p, err := procfs.NewProc(c.pid())
		if err != nil {
			m.procs = nil // not Linux, or /proc is not mounted: figures unknown
			break
		}
		m.procs = append(m.procs, p)
	}
	m.cpu0 = make([]float64, len(m.procs))
	m.peak = make([]float64, len(m.procs))
	for i, p := range m.procs {
		if st, err := p.Stat(); err == nil {
			m.cpu0[i] = st.CPUTime()
			m.peak[i] = float64(st.ResidentMemory())
		}
	}
	go m.sample()
	return m
}

func (m *meter) sample() {
	defer close(m.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-m.stopc:
			return
		case <-t.C:
		}
		m.mu.Lock()
		for i, p := range m.procs {
			if st, err := p.Stat(); err == nil {
				m.peak[i] = max(m.peak[i], float64(st.ResidentMemory()))
			}
		}
		m.mu.Unlock()
	}
}

// rss returns the processes' current resident sets (total and etcd's).
func (m *meter) rss() (total, etcd float64) {
	for i, p := range m.procs {
		if st, err := p.Stat(); err == nil {
			total += float64(st.ResidentMemory())
			if i == 0 {
				etcd = float64(st.ResidentMemory())
			}
		}
	}
	return total, etcd
}

func (m *meter) stop() usage {
	m.stopOnce.Do(func() { close(m.stopc) })
	<-m.done
	u := usage{wall: time.Since(m.t0), clientCPU: selfCPU() - m.client0}
	u.clientCoreFrac = u.clientCPU / u.wall.Seconds() / float64(numCPU())
	if len(m.procs) == 0 {
		return u
	}
	u.known = true
	for i, p := range m.procs {
		st, err := p.Stat()
		if err != nil {
			continue
		}
		cpu := st.CPUTime() - m.cpu0[i]
		u.cpu += cpu
		u.peakRSS += m.peak[i]
		if i == 0 && m.d.etcd != nil {
			u.etcdCPU, u.etcdPeakRSS = cpu, m.peak[i]
		}
	}
	return u
}
