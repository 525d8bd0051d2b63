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

// streamSet is a set of open streams, each ended by canceling its context with a cause. Once
// closed it refuses new ones. The require-leader streams are one, every stream (for Drain)
// another.
type streamSet struct {
	mu      sync.Mutex
	closed  bool
	streams map[*context.CancelCauseFunc]struct{}
}

// add registers a stream's cancel and returns the function that removes it, or nil, refusing
// the stream, once the set is closed.
func (ss *streamSet) add(cancel context.CancelCauseFunc) (remove func()) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return nil
	}
	if ss.streams == nil {
		ss.streams = make(map[*context.CancelCauseFunc]struct{})
	}
	ss.streams[&cancel] = struct{}{}
	return func() {
		ss.mu.Lock()
		delete(ss.streams, &cancel)
		ss.mu.Unlock()
	}
}

// cancelAll ends every stream with cause, and closes the set if close is set.
func (ss *streamSet) cancelAll(cause error, close bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.closed = ss.closed || close
	for c := range ss.streams {
		(*c)(cause)
	}
	clear(ss.streams)
}

// isClosed reports whether the set was closed.
func (ss *streamSet) isClosed() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.closed
}

// Drain ends every stream of the replica with etcd's "server stopped" error and refuses new
// ones, and makes Ready report false. Call it before stopping the grpc.Server gracefully, which
// then waits only for unary calls in flight. Streams are tracked by the interceptor
// NewGRPCServer installs; a grpc.Server built elsewhere and given to Register is not drained.
func (s *Server) Drain() { s.drain.cancelAll(rpctypes.ErrGRPCStopped, true) }

// draining reports whether Drain was called.
func (s *Server) draining() bool { return s.drain.isClosed() }

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
