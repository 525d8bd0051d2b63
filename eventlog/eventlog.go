package eventlog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Config names a revision space's stream and sets its limits.
type Config struct {
	// Stream is the JetStream stream name. Default "WATCHGATE".
	Stream string
	// Subject is the stream's single subject. Default "watchgate.<stream in lower case>".
	Subject string
	// Replicas is the stream's replication factor. Default 1.
	Replicas int
	// MaxAge drops revisions older than this. Default 0: keep forever.
	MaxAge time.Duration
	// MaxBytes drops the oldest revisions beyond this size. Default 0: no limit.
	MaxBytes int64
	// Memory stores the stream in memory instead of files. Default false (file storage).
	Memory bool
}

func (c Config) withDefaults() Config {
	if c.Stream == "" {
		c.Stream = "WATCHGATE"
	}
	if c.Subject == "" {
		c.Subject = "watchgate." + strings.ToLower(c.Stream)
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	return c
}

// FirstRevision is the first revision of a new etcd cluster's history: revision 1 is the empty
// store, so the first write is revision 2.
const FirstRevision = 2

// metaCompact is the stream metadata key under which Jump records the last jump.
const metaCompact = "watchgate.compact-revision"

// Errors returned by Log methods.
var (
	ErrNoStream = errors.New("eventlog: stream does not exist")
)

// Log is a handle on one revision space's stream. It is safe for concurrent use.
type Log struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	cfg    Config
}

func (c Config) streamConfig(first uint64) jetstream.StreamConfig {
	sc := jetstream.StreamConfig{
		Name:        c.Stream,
		Description: "watchgate event log: one message per etcd revision, sequence == revision",
		Subjects:    []string{c.Subject},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      c.MaxAge,
		MaxBytes:    c.MaxBytes,
		MaxMsgs:     -1,
		Replicas:    c.Replicas,
		Storage:     jetstream.FileStorage,
		FirstSeq:    first,
		// Deduplication by message id; the expected-last-sequence fence does the rest.
		Duplicates:  2 * time.Minute,
		AllowDirect: true,
	}
	if c.MaxBytes == 0 {
		sc.MaxBytes = -1
	}
	if c.Memory {
		sc.Storage = jetstream.MemoryStorage
	}
	return sc
}

// Ensure opens the stream, creating it with FirstSeq = FirstRevision if it does not exist, and
// applies the configured limits to an existing one. Ingest calls it; gateways call Bind.
func Ensure(ctx context.Context, js jetstream.JetStream, cfg Config) (*Log, error) {
	ctx, cancel := apiContext(ctx)
	defer cancel()
	cfg = cfg.withDefaults()
	s, err := js.Stream(ctx, cfg.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err = js.CreateStream(ctx, cfg.streamConfig(FirstRevision))
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = js.Stream(ctx, cfg.Stream)
		}
		if err != nil {
			return nil, fmt.Errorf("eventlog: create stream %s: %w", cfg.Stream, err)
		}
	case err != nil:
		return nil, fmt.Errorf("eventlog: open stream %s: %w", cfg.Stream, err)
	default:
		info := s.CachedInfo()
		want := cfg.streamConfig(info.Config.FirstSeq)
		want.Metadata = info.Config.Metadata
		if info.Config.MaxAge != want.MaxAge || info.Config.MaxBytes != want.MaxBytes {
			if s, err = js.UpdateStream(ctx, want); err != nil {
				return nil, fmt.Errorf("eventlog: update limits of %s: %w", cfg.Stream, err)
			}
		}
	}
	return &Log{js: js, stream: s, cfg: cfg}, nil
}

// Bind opens an existing stream without changing it. It returns ErrNoStream if ingest has not
// created it yet.
func Bind(ctx context.Context, js jetstream.JetStream, cfg Config) (*Log, error) {
	ctx, cancel := apiContext(ctx)
	defer cancel()
	cfg = cfg.withDefaults()
	s, err := js.Stream(ctx, cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNoStream, cfg.Stream)
	}
	if err != nil {
		return nil, fmt.Errorf("eventlog: open stream %s: %w", cfg.Stream, err)
	}
	return &Log{js: js, stream: s, cfg: cfg}, nil
}

// Bounds is the range of revisions the log holds.
type Bounds struct {
	// First is the oldest revision held; Last the newest. An empty log has Last == First-1.
	First, Last int64
}

// Compact is the log's compact revision: watches that start below it were compacted.
func (b Bounds) Compact() int64 { return b.First - 1 }

// APITimeout bounds each call a Log makes to the JetStream API, within whatever deadline the
// caller's context has. A request whose reply was lost while the connection moved to another
// server would otherwise wait as long as the caller's context: forever, or for a long-lived
// deadline.
const APITimeout = 5 * time.Second

// apiContext returns ctx bounded by APITimeout, or by its own deadline if that comes sooner.
func apiContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, APITimeout)
}

// Bounds reads the stream's current first and last revision from the server.
func (l *Log) Bounds(ctx context.Context) (Bounds, error) {
	ctx, cancel := apiContext(ctx)
	defer cancel()
	info, err := l.stream.Info(ctx)
	if err != nil {
		return Bounds{}, fmt.Errorf("eventlog: stream info: %w", err)
	}
	first, last := int64(info.State.FirstSeq), int64(info.State.LastSeq)
	if info.State.Msgs == 0 {
		// An empty stream reports FirstSeq = LastSeq+1 (or 0 before its first message).
		first = max(first, last+1)
	}
	return Bounds{First: first, Last: last}, nil
}

// Jump moves an empty-from-here log forward so that the next revision it takes is next: every
// revision below next is dropped, and the log's compact revision becomes next-1. Ingest uses it
// when the member has compacted past the log's end, so the missing range reads as compacted
// instead of silently vanishing. The jump is also recorded in the stream's metadata.
func (l *Log) Jump(ctx context.Context, next int64) error {
	ctx, cancel := apiContext(ctx)
	defer cancel()
	b, err := l.Bounds(ctx)
	if err != nil {
		return err
	}
	if next <= b.Last+1 {
		return fmt.Errorf("eventlog: jump to %d would drop held revisions (last %d)", next, b.Last)
	}
	if err := l.stream.Purge(ctx, jetstream.WithPurgeSequence(uint64(next))); err != nil {
		return fmt.Errorf("eventlog: jump to %d: %w", next, err)
	}
	info, err := l.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("eventlog: jump: %w", err)
	}
	cfg := info.Config
	if cfg.Metadata == nil {
		cfg.Metadata = map[string]string{}
	}
	cfg.Metadata[metaCompact] = strconv.FormatInt(next-1, 10)
	if _, err := l.js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("eventlog: record jump: %w", err)
	}
	return nil
}

// JetStream returns the JetStream context the log was opened with.
func (l *Log) JetStream() jetstream.JetStream { return l.js }

// Subject is the subject every revision is published on.
func (l *Log) Subject() string { return l.cfg.Subject }

// Stream is the JetStream stream name.
func (l *Log) Stream() string { return l.cfg.Stream }
