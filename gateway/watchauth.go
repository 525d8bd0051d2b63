package gateway

import (
	"context"
	"math"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// The replica serves watches itself, so while etcd's auth is on it must ask etcd, as etcd
// asks itself, whether a watch's caller may read the watched range. It asks with the caller's
// own credentials (the stream's metadata): a read at a revision far in the future, which etcd
// refuses with "future revision" only after the caller's permission on the range has passed,
// so nothing is read. A watch from now also needs etcd's current revision, and the shared
// probe, which carries no credentials, is refused while auth is on: the caller's own
// linearizable count of its first key gives it.

// watchAuth checks that the caller of the stream ctx may watch [key, rangeEnd) (etcd's form)
// when etcd's auth is on or the stream carries a token. It returns the cancel reason etcd
// gives a refused watch ("" if allowed), whether it checked at all, and, when it did and
// current is set, etcd's current revision read as the caller.
func (s *Server) watchAuth(ctx context.Context, key, rangeEnd []byte, current bool) (reason string, checked bool, rev int64) {
	if !carriesAuth(ctx) && !s.authOn.Load() {
		return "", false, 0
	}
	kv := pb.NewKVClient(s.o.Member.ActiveConnection())
	up := passthroughContext(ctx)
	_, err := kv.Range(up, &pb.RangeRequest{Key: key, RangeEnd: rangeEnd, Revision: math.MaxInt64, Serializable: true},
		passthroughCallOptions()...)
	if rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(rpctypes.ErrGRPCFutureRev) {
		return watchDeniedReason(err), true, 0
	}
	if !current {
		return "", true, 0
	}
	resp, err := kv.Range(up, &pb.RangeRequest{Key: key, CountOnly: true}, passthroughCallOptions()...)
	if err != nil {
		return rpctypes.ErrorDesc(err), true, 0
	}
	return "", true, resp.Header.Revision
}

// watchDeniedReason is the cancel reason etcd gives a watch its auth refused with err.
func watchDeniedReason(err error) string {
	for _, known := range []error{rpctypes.ErrGRPCInvalidAuthToken, rpctypes.ErrGRPCAuthOldRevision, rpctypes.ErrGRPCUserEmpty} {
		if rpctypes.ErrorDesc(err) == rpctypes.ErrorDesc(known) {
			return known.Error()
		}
	}
	return rpctypes.ErrGRPCPermissionDenied.Error()
}
