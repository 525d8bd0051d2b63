// cluster.go serves the etcd Cluster service's MemberList call with this gateway replica as the
// one member, so clients that sync endpoints from MemberList keep talking to gateways.

package gateway

import (
	"context"
	"hash/fnv"
	"net/url"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// clusterServer serves the etcd Cluster service. Only MemberList is served; membership changes
// (MemberAdd, MemberRemove, MemberUpdate, MemberPromote) answer Unimplemented: the member
// cluster's membership is not the clients' business.
//
// Guarantees: MemberList lists exactly one member, this replica: its ClientURLs are the
// advertised client URL, its ID a stable hash of that URL (the same on every call and across
// restarts), its Name "watchgate-" plus the URL's host, no peer URLs, never a learner. The
// response header is the member cluster's (ClusterId, Revision, RaftTerm of an upstream
// MemberList, linearizable when the request is) with MemberId set to this replica's ID. Upstream
// errors are returned unchanged. It is safe for concurrent use.
//
// A fleet of replicas behind one load balancer should advertise the load balancer's URL, so
// that every replica lists the same member.
type clusterServer struct {
	pb.UnimplementedClusterServer

	// cluster is the member cluster's Cluster service.
	cluster pb.ClusterClient
	// self is the member this replica reports; never modified after construction.
	self *pb.Member
}

// newClusterServer returns a clusterServer describing this replica by advertiseClientURL and
// taking the cluster's identity from the member behind conn, typically
// (*clientv3.Client).ActiveConnection(); see newKVServer about credentials.
func newClusterServer(conn *grpc.ClientConn, advertiseClientURL string) *clusterServer {
	return &clusterServer{
		cluster: pb.NewClusterClient(conn),
		self: &pb.Member{
			ID:         gatewayMemberID(advertiseClientURL),
			Name:       gatewayMemberName(advertiseClientURL),
			ClientURLs: []string{advertiseClientURL},
		},
	}
}

// MemberList returns this replica as the only member, with the member cluster's header.
func (s *clusterServer) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	up, err := s.cluster.MemberList(passthroughContext(ctx),
		&pb.MemberListRequest{Linearizable: r.GetLinearizable()}, passthroughCallOptions()...)
	if err != nil {
		return nil, err
	}
	h := up.GetHeader()
	return &pb.MemberListResponse{
		Header: &pb.ResponseHeader{
			ClusterId: h.GetClusterId(),
			MemberId:  s.self.ID,
			Revision:  h.GetRevision(),
			RaftTerm:  h.GetRaftTerm(),
		},
		Members: []*pb.Member{{
			ID:         s.self.ID,
			Name:       s.self.Name,
			ClientURLs: append([]string(nil), s.self.ClientURLs...),
		}},
	}, nil
}

// gatewayMemberID is the member ID of the replica advertising advertiseClientURL: the FNV-1a
// 64-bit hash of the URL.
func gatewayMemberID(advertiseClientURL string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(advertiseClientURL))
	return h.Sum64()
}

// gatewayMemberName is the member name of the replica advertising advertiseClientURL:
// "watchgate-" plus the URL's host (host:port), or "watchgate" when the URL has no host.
func gatewayMemberName(advertiseClientURL string) string {
	u, err := url.Parse(advertiseClientURL)
	if err != nil || u.Host == "" {
		return "watchgate"
	}
	return "watchgate-" + u.Host
}
