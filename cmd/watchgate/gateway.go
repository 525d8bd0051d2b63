package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/watchgate/watchgate/gateway"
)

const gatewayDescription = `Runs one gateway replica: it serves etcd's v3 gRPC API on --listen-client, answering watches
from the event log (the JetStream stream --stream on --nats-url) and reads from its keyspace
cache, and passing writes and leases through to the etcd cluster at --etcd-endpoints. Run as
many replicas as you like behind a load balancer; they share one revision space. /healthz,
/readyz (caught up with the log, cache loaded) and /metrics are on --listen-http. On SIGINT or
SIGTERM it drains: /readyz fails, streams end with an error etcd clients retry on another
replica (watchers resume where they were), and unary calls in flight get --shutdown-timeout to
finish.`

// gatewayCmd is `watchgate gateway`.
type gatewayCmd struct {
	upstream        upstreamFlags
	log             eventLogFlags
	gateway         gatewayFlags
	listenClient    string
	listenHTTP      string
	shutdownTimeout time.Duration
	out             logOutputFlags
}

func (c *gatewayCmd) register(fs *flag.FlagSet) {
	c.upstream.register(fs)
	c.log.register(fs, false, false)
	fs.StringVar(&c.listenClient, "listen-client", "127.0.0.1:2379", "`host:port` where the gateway serves etcd's gRPC API")
	fs.StringVar(&c.listenHTTP, "listen-http", "127.0.0.1:9379", "`host:port` serving /healthz, /readyz and /metrics, or off")
	c.gateway.register(fs)
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "on a signal, how long unary calls in flight get to finish before they are cut; streams end at once with an error clients retry elsewhere (`duration`)")
	c.out.register(fs)
}

func (c *gatewayCmd) run(ctx context.Context, _, stderr io.Writer) error {
	lg, tel, err := startTelemetry(stderr, c.out)
	if err != nil {
		return err
	}
	defer tel.Close()
	up, err := c.upstream.connect("gateway", lg)
	if err != nil {
		return err
	}
	defer up.Close()

	lis, err := net.Listen("tcp", c.listenClient)
	if err != nil {
		return fmt.Errorf("client listener: %w", err)
	}
	defer lis.Close()
	o := c.gateway.options()
	if o.AdvertiseClientURL == "" {
		o.AdvertiseClientURL = "http://" + lis.Addr().String()
	}
	o.Member, o.JetStream, o.Log = up.Member, up.JS, c.log.config()
	o.Logger, o.Meter = lg.With("component", "gateway"), tel.Meter
	srv, err := gateway.New(o)
	if err != nil {
		return err
	}

	errc := make(chan error, 3)
	hs, httpURL, err := serveHTTP(c.listenHTTP, srv.HTTPHandler(tel.Handler), errc)
	if err != nil {
		return err
	}
	defer shutdownHTTP(hs)

	// The log consumer outlives ctx: it stops only after the gRPC server, so watch streams
	// draining during a graceful stop are still fed.
	runCtx, cancelRun := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRun()
	g := srv.NewGRPCServer()
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Run(runCtx); err != nil {
			errc <- fmt.Errorf("event log consumer: %w", err)
		}
	})
	wg.Go(func() {
		if err := g.Serve(lis); err != nil {
			errc <- fmt.Errorf("serve grpc: %w", err)
		}
	})
	lg.Info("gateway running", "client", "http://"+lis.Addr().String(), "advertise", o.AdvertiseClientURL,
		"http", httpURL, "etcd", c.upstream.endpoints(), "nats", c.upstream.natsURL, "stream", c.log.stream)

	select {
	case <-ctx.Done():
		lg.Info("shutting down", "timeout", c.shutdownTimeout.String())
	case err = <-errc:
		lg.Error("gateway failed; shutting down", "err", err)
	}
	shutdownHTTP(hs)
	// Watch streams end at once with a code clients retry elsewhere; unary calls finish.
	srv.Drain()
	if !gracefulStop(g, c.shutdownTimeout) {
		lg.Warn("calls still in flight after the shutdown timeout were cut")
	}
	cancelRun()
	wg.Wait()
	lg.Info("gateway stopped")
	return err
}

// gracefulStop stops g, letting calls in flight finish for up to timeout and then cutting them.
// It reports whether they all finished in time.
func gracefulStop(g *grpc.Server, timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		g.Stop()
		<-done
		return false
	}
}
