// maintenance.go serves the etcd Maintenance service's Status call from the member cluster's
// status, with the reported version raised to what the gateway's watch features need.

package gateway

import (
	"context"

	"github.com/coreos/go-semver/semver"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// minReportedVersion is the lowest etcd version Status reports. Kubernetes enables watch
// RequestProgress (needed by consistent reads from its watch cache and by WatchList) only against
// etcd >= 3.5.13, and the gateway serves RequestProgress itself whatever the member's version.
const minReportedVersion = "3.5.13"

// maintenanceServer serves the etcd Maintenance service. Only Status is served; every other call
// (Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader, Downgrade) answers Unimplemented, so
// that nothing administrative reaches the member through a gateway.
//
// Guarantees: Status returns the member's own response (header, DbSize, DbSizeInUse, Leader,
// RaftIndex, RaftTerm, RaftAppliedIndex, Errors, IsLearner, storage version) and the member's
// errors unchanged, except that Version is raised to minReportedVersion when the member reports
// a lower or unparsable one. It is safe for concurrent use.
type maintenanceServer struct {
	pb.UnimplementedMaintenanceServer

	// maintenance is the member cluster's Maintenance service.
	maintenance pb.MaintenanceClient
}

// newMaintenanceServer returns a maintenanceServer asking the member behind conn, typically
// (*clientv3.Client).ActiveConnection(); see newKVServer about credentials.
func newMaintenanceServer(conn *grpc.ClientConn) *maintenanceServer {
	return &maintenanceServer{maintenance: pb.NewMaintenanceClient(conn)}
}

// Status forwards a status request and raises the reported version to minReportedVersion.
func (s *maintenanceServer) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	resp, err := s.maintenance.Status(passthroughContext(ctx), r, passthroughCallOptions()...)
	if err != nil {
		return nil, err
	}
	resp.Version = reportedVersion(resp.Version)
	return resp, nil
}

// reportedVersion returns the version the gateway reports for a member reporting v: v itself if
// it is a valid semantic version >= minReportedVersion, minReportedVersion otherwise.
// Pre-releases of minReportedVersion are lower than it, as semver orders them.
func reportedVersion(v string) string {
	floor := semver.New(minReportedVersion)
	got, err := semver.NewVersion(v)
	if err != nil || got.LessThan(*floor) {
		return minReportedVersion
	}
	return v
}
