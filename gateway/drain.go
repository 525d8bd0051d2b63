package gateway

import (
	"context"
	"sync"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
)

// A replica leaving the fleet (a rolling restart, a scale-down) drains: its streams (watches,
// lease keep-alives, streamed ranges) end at once with etcd's "server stopped" error, which is
// Unavailable, the code clientv3 retries: the client opens a new stream, on another replica
// behind the balancer, and resumes each watcher after the last revision it received, so no
// event is lost or repeated. Unary calls in flight are left to finish (the grpc.Server's
// GracefulStop waits for them), and the replica reports not ready, so the balancer stops
// sending it new ones.

// drainer ends the replica's streams when it drains.
type drainer struct {
	mu       sync.Mutex
	draining bool
	streams  map[*context.CancelCauseFunc]struct{}
}

// add registers a stream's cancel; it returns nil, refusing the stream, once draining.
// remove unregisters it.
func (d *drainer) add(cancel context.CancelCauseFunc) (remove func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining {
		return nil
	}
	if d.streams == nil {
		d.streams = make(map[*context.CancelCauseFunc]struct{})
	}
	d.streams[&cancel] = struct{}{}
	return func() {
		d.mu.Lock()
		delete(d.streams, &cancel)
		d.mu.Unlock()
	}
}

// Drain ends every stream of the replica with etcd's "server stopped" error and refuses new
// ones, and makes Ready report false. Call it before stopping the grpc.Server gracefully, which
// then waits only for unary calls in flight. Streams are tracked by the interceptor
// NewGRPCServer installs; a grpc.Server built elsewhere and given to Register is not drained.
func (s *Server) Drain() {
	d := &s.drain
	d.mu.Lock()
	defer d.mu.Unlock()
	d.draining = true
	for c := range d.streams {
		(*c)(rpctypes.ErrGRPCStopped)
	}
	clear(d.streams)
}

// draining reports whether Drain was called.
func (s *Server) draining() bool {
	s.drain.mu.Lock()
	defer s.drain.mu.Unlock()
	return s.drain.draining
}

// drainStreams is the stream interceptor that lets Drain end a stream: the handler sees a
// context Drain cancels, and the client gets the "server stopped" error whatever the handler
// returns then.
func (s *Server) drainStreams(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := context.WithCancelCause(ss.Context())
	defer cancel(nil)
	remove := s.drain.add(cancel)
	if remove == nil {
		return rpctypes.ErrGRPCStopped
	}
	defer remove()
	err := handler(srv, &drainedStream{ServerStream: ss, ctx: ctx})
	if cause := context.Cause(ctx); cause == rpctypes.ErrGRPCStopped {
		return cause
	}
	return err
}

// drainedStream is a stream whose context Drain can cancel.
type drainedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *drainedStream) Context() context.Context { return s.ctx }
