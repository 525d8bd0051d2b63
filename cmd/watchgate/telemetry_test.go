package main

import (
	"bytes"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestZapLogger(t *testing.T) {
	var buf bytes.Buffer
	lg, err := newLogger(&buf, logOutputFlags{format: "text", level: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	zl := zapLogger(lg.With("component", "etcd"), zapcore.WarnLevel, etcdCloseNoise)
	zl.Info("below the minimum")
	zl.Named("raft").With(zap.Int("term", 3)).Warn("slow fdatasync", zap.Duration("took", 0))
	zl.Error("setting up serving from embedded etcd failed.", zap.Error(errors.New("http: Server closed")))
	zl.Error("setting up serving from embedded etcd failed.", zap.Error(errors.New("tls: bad certificate")))

	got := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{
		`level=WARN msg="slow fdatasync" component=etcd logger=raft term=3 took=0s`,
		`level=DEBUG msg="setting up serving from embedded etcd failed." component=etcd error="http: Server closed"`,
		`level=ERROR msg="setting up serving from embedded etcd failed." component=etcd error="tls: bad certificate"`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(got), len(want), buf.String())
	}
	for i := range want {
		if !strings.HasSuffix(got[i], want[i]) {
			t.Errorf("line %d = %s\nwant suffix   %s", i, got[i], want[i])
		}
	}
}

func TestNewLogger(t *testing.T) {
	for _, tt := range []struct {
		f        logOutputFlags
		wantErr  bool
		wantLine string // what lg.Info("hi") writes, "" if filtered
	}{
		{f: logOutputFlags{"text", "info"}, wantLine: "level=INFO msg=hi"},
		{f: logOutputFlags{"json", "info"}, wantLine: `"level":"INFO","msg":"hi"`},
		{f: logOutputFlags{"text", "warn"}},
		{f: logOutputFlags{"text", "ERROR"}},
		{f: logOutputFlags{"xml", "info"}, wantErr: true},
		{f: logOutputFlags{"text", "loud"}, wantErr: true},
	} {
		var buf bytes.Buffer
		lg, err := newLogger(&buf, tt.f)
		if (err != nil) != tt.wantErr {
			t.Errorf("newLogger(%+v) error = %v, want error %v", tt.f, err, tt.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		lg.Info("hi")
		if got := buf.String(); (tt.wantLine == "") != (got == "") || !strings.Contains(got, tt.wantLine) {
			t.Errorf("newLogger(%+v): Info wrote %q, want %q", tt.f, got, tt.wantLine)
		}
	}
}

// TestTelemetry checks that what is recorded with the meter is served by the handler.
func TestTelemetry(t *testing.T) {
	var logs bytes.Buffer
	lg, _ := newLogger(&logs, logOutputFlags{"text", "info"})
	tel, err := newTelemetry(lg)
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Close()
	c, err := tel.Meter.Int64Counter("watchgate.test.things")
	if err != nil {
		t.Fatal(err)
	}
	c.Add(t.Context(), 7)
	rec := httptest.NewRecorder()
	tel.Handler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, s := range []string{`watchgate_test_things_total{otel_scope_name="watchgate"`, "} 7\n", "go_goroutines", `service_name="watchgate"`} {
		if !strings.Contains(body, s) {
			t.Errorf("/metrics lacks %q:\n%s", s, body)
		}
	}
	if logs.Len() > 0 {
		t.Errorf("telemetry logged: %s", logs.String())
	}
}
