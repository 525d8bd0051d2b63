// lease.go forwards the etcd Lease service to the member cluster: the unary calls unchanged, and
// each LeaseKeepAlive stream onto an upstream stream of its own.

package gateway

import (
	"context"
	"errors"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// leaseServer serves the etcd Lease service by forwarding to the member cluster.
//
// Guarantees: LeaseGrant, LeaseRevoke, LeaseTimeToLive and LeaseLeases behave as kvServer's calls
// do: request, response and error pass unchanged, with the caller's metadata and deadline. Each
// LeaseKeepAlive client stream gets exactly one upstream stream, opened with the client's
// metadata; requests and responses are relayed one for one, in order, without buffering beyond
// one message in each direction (gRPC flow control is the backpressure). The relay ends when
// either side ends:
//   - the client half-closes: the upstream stream is half-closed, the remaining responses are
//     relayed, and the client sees a clean end once etcd ends the stream;
//   - the upstream stream fails: its error reaches the client unchanged;
//   - the client goes away: the upstream stream is canceled.
//
// No goroutine outlives the stream: the request pump exits as soon as gRPC finishes the client
// stream, which happens when LeaseKeepAlive returns.
type leaseServer struct {
	pb.UnimplementedLeaseServer

	// lease is the member cluster's Lease service.
	lease pb.LeaseClient
}

// newLeaseServer returns a leaseServer forwarding to the member behind conn, typically
// (*clientv3.Client).ActiveConnection(); see newKVServer about credentials.
func newLeaseServer(conn *grpc.ClientConn) *leaseServer {
	return &leaseServer{lease: pb.NewLeaseClient(conn)}
}

// LeaseGrant forwards a lease grant.
func (s *leaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return s.lease.LeaseGrant(passthroughContext(ctx), r, passthroughCallOptions()...)
}

// LeaseRevoke forwards a lease revocation.
func (s *leaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return s.lease.LeaseRevoke(passthroughContext(ctx), r, passthroughCallOptions()...)
}

// LeaseTimeToLive forwards a lease time-to-live query.
func (s *leaseServer) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	return s.lease.LeaseTimeToLive(passthroughContext(ctx), r, passthroughCallOptions()...)
}

// LeaseLeases forwards a lease listing.
func (s *leaseServer) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return s.lease.LeaseLeases(passthroughContext(ctx), r, passthroughCallOptions()...)
}

// LeaseKeepAlive relays one client keep-alive stream over one upstream stream. Responses are
// relayed by this goroutine, requests by a second one (the request pump).
func (s *leaseServer) LeaseKeepAlive(stream grpc.BidiStreamingServer[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) error {
	// Canceling ctx ends the upstream stream: on return, and when the pump fails.
	ctx, cancel := context.WithCancel(passthroughContext(stream.Context()))
	defer cancel()
	up, err := s.lease.LeaseKeepAlive(ctx, passthroughCallOptions()...)
	if err != nil {
		return err
	}

	// pumpErr is sent exactly once by the request pump, with nil when the client half-closed (or
	// the upstream stream ended, whose status up.Recv reports) and with the error otherwise. The
	// pump sends before it cancels ctx, so an upstream failure caused by that cancel always finds
	// the pump's error here. Buffered so the pump never blocks on it.
	pumpErr := make(chan error, 1)
	go func() {
		err := pumpKeepAliveRequests(stream, up)
		pumpErr <- err
		if err != nil {
			cancel()
		}
	}()

	for {
		resp, err := up.Recv()
		if err != nil {
			select {
			case perr := <-pumpErr:
				if perr != nil {
					return perr
				}
			default:
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// pumpKeepAliveRequests relays requests from the client stream to the upstream stream until the
// client half-closes (then it half-closes upstream and returns nil), the upstream stream ends
// (nil: its status is up.Recv's to report) or relaying fails (that error).
func pumpKeepAliveRequests(client grpc.BidiStreamingServer[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse], up grpc.BidiStreamingClient[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) error {
	for {
		req, err := client.Recv()
		if errors.Is(err, io.EOF) {
			return up.CloseSend()
		}
		if err != nil {
			return err
		}
		if err := up.Send(req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
