package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	rpprof "runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/watchgate/watchgate/internal/embedded"
	"github.com/watchgate/watchgate/internal/stack"
)

// Every server a benchmark measures runs in a process of its own, so that its CPU time and
// memory can be read from the operating system apart from the load generator's and apart from
// each other (etcd's figures are reported on their own, to show what a tier saves it). The
// process is this same executable, started with childEnv set to a JSON childSpec: ServeIfChild
// recognises that, runs the server and exits when its standard input closes, which also ends it
// when the parent dies.

const childEnv = "WATCHGATE_BENCH_CHILD"

// Roles a child process can play.
const (
	roleEtcd      = "etcd"      // a single-member embedded etcd
	roleGRPCProxy = "grpcproxy" // etcd's gRPC proxy in front of Upstream
	roleWatchgate = "watchgate" // NATS JetStream + ingest + gateway in front of Upstream
	// roleGateway is one more gateway replica of a watchgate tier: in front of Upstream,
	// following the event log at NATS. Unlike the other roles it serves only once it is ready
	// (caught up with the log and, unless disabled, its keyspace cache loaded).
	roleGateway = "gateway"
)

type childSpec struct {
	Role     string
	Dir      string
	Upstream string // the etcd endpoint a proxy role fronts
	Fsync    bool   // etcd fsyncs its WAL (off by default: disk noise is not what is measured)
	NATS     string // the gateway role's event log: the watchgate tier's NATS URL
	// CacheMaxBytes is the gateway role's gateway.Options.CacheMaxBytes (0: its default,
	// negative: no keyspace cache).
	CacheMaxBytes int64
	// CPUProfile, if set, is a file that receives a CPU profile of the child from its start
	// until it serves: what starting up cost.
	CPUProfile string
}

// childReady is the one line of JSON a child prints on stdout when it serves.
type childReady struct {
	Endpoint string // etcd API endpoint, "http://127.0.0.1:port"
	Debug    string // pprof and heap figures, "http://127.0.0.1:port"
	NATS     string // the watchgate role's NATS URL
	Error    string // set instead when the server failed to start
}

// ServeIfChild runs the benchmark server this process was started to be, if it was, and then
// exits; otherwise it returns at once. Call it first thing in main (and in TestMain of tests
// that run benchmarks).
func ServeIfChild() {
	raw, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	var spec childSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "bench child: bad %s: %v\n", childEnv, err)
		os.Exit(2)
	}
	if err := serveChild(spec, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "bench child %s: %v\n", spec.Role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func serveChild(spec childSpec, stdin io.Reader, stdout io.Writer) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ready := childReady{}
	defer func() {
		if err != nil {
			ready.Error = err.Error()
			_ = json.NewEncoder(stdout).Encode(ready)
		}
	}()

	stopProfile, err := startupProfile(spec.CPUProfile)
	if err != nil {
		return err
	}
	defer stopProfile() // if it fails before it serves

	var gauges func(context.Context) map[string]int64
	var closeServer func()
	switch spec.Role {
	case roleEtcd:
		e, err := embedded.StartEtcd(embedded.EtcdOptions{
			Dir: filepath.Join(spec.Dir, "etcd"), UnsafeNoFsync: !spec.Fsync, ZapLogger: zap.NewNop(),
		})
		if err != nil {
			return err
		}
		ready.Endpoint, closeServer = e.Endpoint, e.Close
	case roleGRPCProxy:
		ready.Endpoint, closeServer, err = startGRPCProxy(spec.Upstream)
	case roleWatchgate:
		var st *stack.Stack
		st, err = stack.Start(ctx, stack.Options{
			DataDir: spec.Dir, ClientAddr: "127.0.0.1:0", HTTPAddr: "off", NATSPort: -1,
			EtcdEndpoints: []string{spec.Upstream},
		})
		if err == nil {
			ready.Endpoint, ready.NATS, closeServer = st.ClientURL, st.NATS.ClientURL(), st.Close
			err = st.WaitReady(ctx)
		}
	case roleGateway:
		ready.Endpoint, gauges, closeServer, err = startGateway(ctx, spec)
	default:
		err = fmt.Errorf("unknown role %q", spec.Role)
	}
	if err != nil {
		return err
	}
	defer closeServer()

	dl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ready.Debug = "http://" + dl.Addr().String()
	hs := &http.Server{Handler: debugMux(gauges), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(dl) }()
	defer hs.Close()

	stopProfile()
	if err := json.NewEncoder(stdout).Encode(ready); err != nil {
		return err
	}
	// Serve until the parent closes stdin (or dies) or a signal arrives.
	eof := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, stdin); close(eof) }()
	select {
	case <-eof:
	case <-ctx.Done():
	}
	return nil
}

// startGRPCProxy runs etcd's gRPC proxy in front of upstream, set up as `etcd grpc-proxy start
// --endpoints=upstream` sets it up: the same client options, services and server options
// (including its Prometheus interceptors and unlimited concurrent streams).
func startGRPCProxy(upstream string) (endpoint string, closeFn func(), err error) {
	client, err := clientv3.New(clientv3.Config{
		Endpoints:          []string{upstream},
		DialTimeout:        5 * time.Second,
		MaxCallSendMsgSize: 3 * 1024 * 1024 / 2,
		DialOptions: []grpc.DialOption{
			grpc.WithUnaryInterceptor(grpcproxy.AuthUnaryClientInterceptor),
			grpc.WithStreamInterceptor(grpcproxy.AuthStreamClientInterceptor),
		},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return "", nil, err
	}
	lg := zap.NewNop()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		client.Close()
		return "", nil, err
	}
	endpoint = "http://" + lis.Addr().String()

	kvp, _ := grpcproxy.NewKvProxy(client)
	watchp, _ := grpcproxy.NewWatchProxy(client.Ctx(), lg, client)
	clusterp, _ := grpcproxy.NewClusterProxy(lg, client, endpoint, "")
	leasep, _ := grpcproxy.NewLeaseProxy(client.Ctx(), client)
	metrics := grpcprom.NewServerMetrics()
	srv := grpc.NewServer(
		grpc.ChainStreamInterceptor(metrics.StreamServerInterceptor()),
		grpc.ChainUnaryInterceptor(metrics.UnaryServerInterceptor()),
		grpc.MaxConcurrentStreams(math.MaxUint32),
	)
	pb.RegisterKVServer(srv, kvp)
	pb.RegisterWatchServer(srv, watchp)
	pb.RegisterClusterServer(srv, clusterp)
	pb.RegisterLeaseServer(srv, leasep)
	pb.RegisterMaintenanceServer(srv, grpcproxy.NewMaintenanceProxy(client))
	pb.RegisterAuthServer(srv, grpcproxy.NewAuthProxy(client))
	v3electionpb.RegisterElectionServer(srv, grpcproxy.NewElectionProxy(client))
	v3lockpb.RegisterLockServer(srv, grpcproxy.NewLockProxy(client))
	go func() { _ = srv.Serve(lis) }()
	return endpoint, func() { srv.Stop(); client.Close() }, nil
}

// startupProfile starts a CPU profile into path, if it is set; stop ends it (at most once).
func startupProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := rpprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return sync.OnceFunc(func() { rpprof.StopCPUProfile(); f.Close() }), nil
}

// heapFigures is what a child's /debug/heap reports, measured right after a full GC.
type heapFigures struct {
	HeapInuse  uint64 `json:"heap_inuse"`
	Goroutines int    `json:"goroutines"`
	// Gauges are the server's integer gauges (OpenTelemetry name → value, summed over
	// attributes), for roles that report metrics: the gateway role's cache sizes, for one.
	Gauges map[string]int64 `json:"gauges,omitempty"`
}

// debugMux serves the child's profiles and heap figures; gauges, if set, adds the server's
// gauges to the heap figures.
func debugMux(gauges func(context.Context) map[string]int64) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	// A CPU profile over an interval whose length the parent does not know in advance: start
	// it, and stop it to get the profile.
	var mu sync.Mutex
	var cpu *bytes.Buffer
	mux.HandleFunc("POST /debug/cpu/start", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if cpu != nil {
			http.Error(w, "already profiling", http.StatusConflict)
			return
		}
		cpu = &bytes.Buffer{}
		if err := rpprof.StartCPUProfile(cpu); err != nil {
			cpu = nil
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("POST /debug/cpu/stop", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if cpu == nil {
			http.Error(w, "not profiling", http.StatusConflict)
			return
		}
		rpprof.StopCPUProfile()
		_, _ = w.Write(cpu.Bytes())
		cpu = nil
	})
	mux.HandleFunc("/debug/heap", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		h := heapFigures{HeapInuse: ms.HeapInuse, Goroutines: runtime.NumGoroutine()}
		if gauges != nil {
			h.Gauges = gauges(r.Context())
		}
		_ = json.NewEncoder(w).Encode(h)
	})
	return mux
}

// child is a running server process, seen from the parent.
type child struct {
	role  string
	ready childReady
	cmd   *exec.Cmd
	stdin io.WriteCloser
	log   string // the child's stderr, kept for diagnosis
	done  chan struct{}
}

// spawn starts a child process for spec and waits until it serves (or ctx ends).
func spawn(ctx context.Context, spec childSpec) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		return nil, err
	}
	c := &child{role: spec.Role, log: filepath.Join(spec.Dir, spec.Role+".log"), done: make(chan struct{})}
	logf, err := os.Create(c.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	c.cmd = exec.Command(exe)
	c.cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	c.cmd.Stderr = logf
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()

	line := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if !sc.Scan() {
			line <- errors.New("exited before serving")
			return
		}
		line <- json.Unmarshal(sc.Bytes(), &c.ready)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case err = <-line:
		if err == nil && c.ready.Error != "" {
			err = errors.New(c.ready.Error)
		}
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("%s server: %w%s", spec.Role, err, c.logTail())
	}
	return c, nil
}

// stop asks the child to exit (by closing its stdin) and kills it if it has not within 30 s.
func (c *child) stop() {
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// logTail returns the end of the child's stderr, for error messages.
func (c *child) logTail() string {
	b, err := os.ReadFile(c.log)
	if err != nil || len(b) == 0 {
		return ""
	}
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return "\n" + s
}

// heap asks the child for its heap figures after a GC.
func (c *child) heap(ctx context.Context) (heapFigures, error) {
	var h heapFigures
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.ready.Debug+"/debug/heap", nil)
	if err != nil {
		return h, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

// startCPUProfile starts profiling the child's CPU; the returned function stops it and saves
// the profile to path.
func (c *child) startCPUProfile(ctx context.Context, path string) (stop func() error, err error) {
	if _, err := c.post(ctx, "/debug/cpu/start"); err != nil {
		return nil, err
	}
	return func() error {
		b, err := c.post(ctx, "/debug/cpu/stop")
		if err != nil {
			return err
		}
		return os.WriteFile(path, b, 0o644)
	}, nil
}

func (c *child) post(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.ready.Debug+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s: %s", path, resp.Status, bytes.TrimSpace(b))
	}
	return b, err
}
