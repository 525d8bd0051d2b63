// kv.go serves the etcd KV service (Range, Put, DeleteRange, Txn, Compact): writes, and the reads
// the cache cannot answer, go to the member cluster unchanged. It also holds the helpers every
// pass-through service shares: how the caller's metadata and deadline reach the member, and
// which call options upstream calls use.

package gateway

import (
	"context"
	"errors"
	"io"
	"math"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// kvServer serves the etcd KV service: a Range the replica's cache can answer is answered
// there (see reads.go); every other request is forwarded, unchanged, to the member cluster over
// one shared connection.
//
// Guarantees: a forwarded request's response is returned as is (header included), and the
// member's error is returned as is, so clients see etcd's own gRPC codes and messages (ErrGRPCCompacted,
// ErrGRPCFutureRev, "etcdserver: request is too large", ...). The caller's metadata (the
// "hasleader" require-leader flag, the auth "token") and deadline travel with the upstream call,
// and a caller that goes away cancels it. kvServer is safe for concurrent use.
// RangeStream (etcd 3.7) is forwarded chunk by chunk.
type kvServer struct {
	pb.UnimplementedKVServer

	// kv is the member cluster's KV service.
	kv pb.KVClient
	// compacted, if set, is told of every compaction that passed through.
	compacted func()
	// cached, if set, answers the ranges it can (handled true) from the replica's cache.
	cached func(ctx context.Context, r *pb.RangeRequest) (resp *pb.RangeResponse, handled bool, err error)
	// passed, if set, counts the ranges passed through.
	passed func()
}

// newKVServer returns a kvServer forwarding to the member behind conn, typically
// (*clientv3.Client).ActiveConnection(). The connection must not carry credentials of its own:
// the caller's auth token is forwarded, and a connection-level token would be sent as well.
func newKVServer(conn *grpc.ClientConn) *kvServer {
	return &kvServer{kv: pb.NewKVClient(conn)}
}

// Range answers a range request from the replica's cache if it can, else forwards it.
func (s *kvServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if s.cached != nil {
		if resp, handled, err := s.cached(ctx, r); handled {
			return resp, err
		}
	}
	if s.passed != nil {
		s.passed()
	}
	return s.kv.Range(passthroughContext(ctx), r, passthroughCallOptions()...)
}

// RangeStream forwards a streaming range: each chunk the member sends is relayed as it
// arrives, and the member's error, if any, ends the client's stream unchanged.
func (s *kvServer) RangeStream(r *pb.RangeRequest, srv pb.KV_RangeStreamServer) error {
	up, err := s.kv.RangeStream(passthroughContext(srv.Context()), r, passthroughCallOptions()...)
	if err != nil {
		return err
	}
	for {
		resp, err := up.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := srv.Send(resp); err != nil {
			return err
		}
	}
}

// Put forwards a put request.
func (s *kvServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	return s.kv.Put(passthroughContext(ctx), r, passthroughCallOptions()...)
}

// DeleteRange forwards a delete request.
func (s *kvServer) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return s.kv.DeleteRange(passthroughContext(ctx), r, passthroughCallOptions()...)
}

// Txn forwards a transaction.
func (s *kvServer) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	return s.kv.Txn(passthroughContext(ctx), r, passthroughCallOptions()...)
}

// Compact forwards a compaction request.
func (s *kvServer) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	resp, err := s.kv.Compact(passthroughContext(ctx), r, passthroughCallOptions()...)
	if s.compacted != nil {
		s.compacted()
	}
	return resp, err
}

// passthroughCallOptions returns the call options of every upstream call. gRPC's default 4 MiB
// receive limit would refuse large responses that etcd sends (etcd's own send limit is
// math.MaxInt32), so the gateway accepts whatever the member sends, as clientv3 does. The request
// side needs no limit here: the gateway's server enforces etcd's MaxRequestBytes + 512 KiB on what
// it accepts, and etcd answers anything bigger than MaxRequestBytes itself.
func passthroughCallOptions() []grpc.CallOption {
	return []grpc.CallOption{grpc.MaxCallRecvMsgSize(math.MaxInt32)}
}

// passthroughContext returns the context for the upstream call made on behalf of the incoming
// call ctx: it inherits ctx's deadline and cancellation, and carries the caller's metadata as
// outgoing metadata, minus the transport's own headers (pseudo-headers, content-type,
// user-agent, te and grpc-*), which the upstream connection sets for itself.
func passthroughContext(ctx context.Context) context.Context {
	in, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(in) == 0 {
		return ctx
	}
	out := make(metadata.MD, len(in))
	for k, v := range in {
		if isTransportHeader(k) {
			continue
		}
		out[k] = append([]string(nil), v...)
	}
	if len(out) == 0 {
		return ctx
	}
	return metadata.NewOutgoingContext(ctx, out)
}

// isTransportHeader reports whether the (lower-case) metadata key is set by the gRPC transport
// rather than by the caller, and so must not be copied onto an upstream call.
func isTransportHeader(k string) bool {
	if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") {
		return true
	}
	switch k {
	case "content-type", "user-agent", "te", "connection", "host":
		return true
	}
	return false
}
