package gateway

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// fragments splits an event response for a watcher created with fragment=true exactly as etcd
// does: a response of at least limit bytes with two or more events becomes a series of
// responses, each holding as many whole events as keep it under limit (at least one), all
// marked Fragment but the last. The client reassembles them. Our event responses carry their
// events pre-encoded (see eventsResponse), so the split walks those bytes.
func fragments(resp *pb.WatchResponse, events int, limit int) []*pb.WatchResponse {
	if events < 2 || proto.Size(resp) < limit {
		return []*pb.WatchResponse{resp}
	}
	wire := []byte(resp.ProtoReflect().GetUnknown())
	base := proto.Size(&pb.WatchResponse{Header: resp.Header, WatchId: resp.WatchId, Fragment: true})
	var out []*pb.WatchResponse
	for len(wire) > 0 {
		size, n, end := base, 0, 0
		for end < len(wire) {
			_, _, l := protowire.ConsumeField(wire[end:])
			if l < 0 {
				break // cannot happen: the bytes were encoded by us or by ingest
			}
			if n > 0 && size+l >= limit {
				break
			}
			size += l
			end += l
			n++
		}
		f := eventsResponse(resp.Header, resp.WatchId, wire[:end:end])
		wire = wire[end:]
		f.Fragment = len(wire) > 0
		out = append(out, f)
	}
	return out
}
