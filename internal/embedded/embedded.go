// Package embedded starts the real etcd and NATS JetStream servers in-process, on loopback.
//
// It is the one place that knows how to run them: `watchgate dev` uses it for its all-in-one
// mode, and internal/testenv wraps it for tests, so the code a newcomer runs first is the code the
// integration tests exercise.
package embedded

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// EtcdOptions configures an embedded single-member etcd.
type EtcdOptions struct {
	// Dir is the data directory. Required.
	Dir string
	// ClientAddr is the host:port clients connect to. Default "127.0.0.1:0" (a free port).
	ClientAddr string
	// PeerAddr is the host:port of the raft peer listener. Default "127.0.0.1:0".
	PeerAddr string
	// Name is the member name. Default "watchgate".
	Name string
	// UnsafeNoFsync skips fsync; for tests only. Default false.
	UnsafeNoFsync bool
	// MaxRequestBytes is etcd's request size limit. Default etcd's own (1.5 MiB).
	MaxRequestBytes uint
	// ProgressNotifyInterval is etcd's watch progress notification interval. Default etcd's own (10m).
	ProgressNotifyInterval time.Duration
	// LogLevel is etcd's zap log level. Default "error".
	LogLevel string
	// ZapLogger, if set, replaces etcd's own logger (tests pass zap.NewNop()). Default nil.
	ZapLogger *zap.Logger
	// StartTimeout bounds how long to wait for the member to be ready. Default 1 minute.
	StartTimeout time.Duration
}

// Etcd is a running embedded etcd member.
type Etcd struct {
	*embed.Etcd
	// Endpoint is the client URL, e.g. "http://127.0.0.1:40123".
	Endpoint string
}

// StartEtcd starts a single-member etcd and waits until it serves clients.
func StartEtcd(o EtcdOptions) (*Etcd, error) {
	if o.Dir == "" {
		return nil, errors.New("embedded: etcd data dir is required")
	}
	if o.ClientAddr == "" {
		o.ClientAddr = "127.0.0.1:0"
	}
	if o.PeerAddr == "" {
		o.PeerAddr = "127.0.0.1:0"
	}
	if o.Name == "" {
		o.Name = "watchgate"
	}
	if o.LogLevel == "" {
		o.LogLevel = "error"
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = time.Minute
	}
	cfg := embed.NewConfig()
	cfg.Name = o.Name
	cfg.Dir = o.Dir
	cfg.LogLevel = o.LogLevel
	cfg.UnsafeNoFsync = o.UnsafeNoFsync
	if o.ZapLogger != nil {
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(o.ZapLogger)
	}
	if o.MaxRequestBytes > 0 {
		cfg.MaxRequestBytes = o.MaxRequestBytes
	}
	if o.ProgressNotifyInterval > 0 {
		cfg.WatchProgressNotifyInterval = o.ProgressNotifyInterval
	}
	curl := url.URL{Scheme: "http", Host: o.ClientAddr}
	purl := url.URL{Scheme: "http", Host: o.PeerAddr}
	cfg.ListenClientUrls = []url.URL{curl}
	cfg.AdvertiseClientUrls = []url.URL{curl}
	cfg.ListenPeerUrls = []url.URL{purl}
	cfg.AdvertisePeerUrls = []url.URL{purl}
	cfg.InitialCluster = fmt.Sprintf("%s=%s", o.Name, purl.String())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded: start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded: etcd failed: %w", err)
	case <-time.After(o.StartTimeout):
		e.Server.Stop()
		e.Close()
		return nil, errors.New("embedded: etcd did not become ready in time")
	}
	return &Etcd{Etcd: e, Endpoint: "http://" + e.Clients[0].Addr().String()}, nil
}

// NATSOptions configures an embedded NATS server with JetStream.
type NATSOptions struct {
	// StoreDir is JetStream's storage directory. Required.
	StoreDir string
	// Host to listen on. Default "127.0.0.1".
	Host string
	// Port to listen on. Default -1 (a free port).
	Port int
	// MaxPayload is the largest message the server accepts. Default 8 MiB, enough for any revision
	// etcd's default 1.5 MiB request limit can produce with prev_kv.
	MaxPayload int32
	// Logger receives the server's notices and errors. Default: none.
	Logger *slog.Logger
	// StartTimeout bounds how long to wait for the server to accept connections. Default 30 s.
	StartTimeout time.Duration
}

// DefaultMaxPayload is NATSOptions.MaxPayload's default.
const DefaultMaxPayload = 8 << 20

// StartNATS starts a NATS server with JetStream file storage and waits until it accepts
// connections.
func StartNATS(o NATSOptions) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("embedded: JetStream store dir is required")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = -1
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = 30 * time.Second
	}
	ns, err := server.NewServer(&server.Options{
		ServerName:             "watchgate",
		Host:                   o.Host,
		Port:                   o.Port,
		JetStream:              true,
		StoreDir:               o.StoreDir,
		MaxPayload:             o.MaxPayload,
		NoSigs:                 true,
		DisableJetStreamBanner: true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded: nats: %w", err)
	}
	if o.Logger != nil {
		ns.SetLoggerV2(slogNATSLogger{o.Logger}, false, false, false)
	}
	go ns.Start()
	if !ns.ReadyForConnections(o.StartTimeout) {
		ns.Shutdown()
		return nil, errors.New("embedded: nats did not become ready in time")
	}
	return ns, nil
}

// slogNATSLogger adapts slog to the NATS server's logger interface.
type slogNATSLogger struct{ l *slog.Logger }

func (s slogNATSLogger) Noticef(format string, v ...any) { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s slogNATSLogger) Warnf(format string, v ...any)   { s.l.Warn(fmt.Sprintf(format, v...)) }
func (s slogNATSLogger) Fatalf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s slogNATSLogger) Errorf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s slogNATSLogger) Debugf(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s slogNATSLogger) Tracef(format string, v ...any)  {}
