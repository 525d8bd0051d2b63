package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// telemetry is the process's metrics pipeline: OpenTelemetry instruments, exported through a
// Prometheus registry of our own (nothing is registered globally).
type telemetry struct {
	provider *sdkmetric.MeterProvider
	// Meter is what components record with (their Options.Meter).
	Meter metric.Meter
	// Handler serves the registry in the Prometheus text format, for /metrics.
	Handler http.Handler
}

func newTelemetry(lg *slog.Logger) (*telemetry, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(),
		resource.NewSchemaless(attribute.String("service.name", "watchgate")))
	if err != nil {
		return nil, fmt.Errorf("metrics resource: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
	return &telemetry{
		provider: mp,
		Meter:    mp.Meter("watchgate"),
		Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			ErrorLog:      slog.NewLogLogger(lg.Handler(), slog.LevelError),
			ErrorHandling: promhttp.ContinueOnError,
		}),
	}, nil
}

// Close flushes and stops the meter provider.
func (t *telemetry) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return t.provider.Shutdown(ctx)
}

// newLogger builds the process logger, writing format ("text" or "json") to w at level and
// above.
func newLogger(w io.Writer, f logOutputFlags) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	ho := &slog.HandlerOptions{Level: level}
	switch f.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	default:
		return nil, fmt.Errorf("--log-format: want text or json, got %q", f.format)
	}
}

// zapLogger adapts lg for the etcd libraries, which log through zap: entries at min and above
// go to lg, so the whole process logs in one format. If demote is not nil, entries it reports
// true for are logged at debug level instead of their own.
func zapLogger(lg *slog.Logger, min zapcore.Level, demote func(zapcore.Entry, map[string]any) bool) *zap.Logger {
	return zap.New(&slogCore{lg: lg, min: min, demote: demote})
}

// slogCore is a zapcore.Core writing to a slog.Logger.
type slogCore struct {
	lg     *slog.Logger
	min    zapcore.Level
	demote func(zapcore.Entry, map[string]any) bool
	fields []zapcore.Field // from With, written before each entry's own fields
}

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return l >= c.min && c.lg.Enabled(context.Background(), slogLevel(l))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{lg: c.lg, min: c.min, demote: c.demote, fields: append(slices.Clip(c.fields), fields...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]slog.Attr, 0, len(keys)+1)
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	level := slogLevel(e.Level)
	if c.demote != nil && c.demote(e, enc.Fields) {
		level = slog.LevelDebug
	}
	c.lg.LogAttrs(context.Background(), level, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }

// serveHTTP serves h on addr in the background; "off" serves nothing and returns a nil server.
// Serve errors other than a clean shutdown are sent to errc.
func serveHTTP(addr string, h http.Handler, errc chan<- error) (*http.Server, string, error) {
	if addr == "off" {
		return nil, "", nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("http listener: %w", err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serve http: %w", err)
		}
	}()
	return hs, "http://" + lis.Addr().String(), nil
}

// shutdownHTTP stops hs (if any), letting requests in flight finish for a few seconds.
func shutdownHTTP(hs *http.Server) {
	if hs == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(ctx); err != nil {
		hs.Close()
	}
}

// startTelemetry builds what every command starts with: the logger and the metrics pipeline.
func startTelemetry(stderr io.Writer, out logOutputFlags) (*slog.Logger, *telemetry, error) {
	lg, err := newLogger(stderr, out)
	if err != nil {
		return nil, nil, err
	}
	tel, err := newTelemetry(lg)
	if err != nil {
		return nil, nil, err
	}
	return lg, tel, nil
}
