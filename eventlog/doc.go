// Package eventlog is the schema of watchgate's event log and the one place that reads and writes
// it. Ingest workers append to it; gateway replicas consume it.
//
// # Layout
//
// A revision space (one etcd cluster, or one sharded deployment) is one NATS JetStream stream
// with one subject. Each etcd revision is exactly one message, and its stream sequence equals the
// revision:
//
//   - the body is every event of the revision, in etcd's order, encoded with etcd's own protobuf
//     types as a sequence of the `events` field (11) of etcdserverpb.WatchResponse; a
//     transaction is never split;
//   - the header Watchgate-Revision repeats the revision, and Nats-Msg-Id is the revision, so a
//     repeated publish is dropped;
//   - the stream is created with FirstSeq = the first revision it will hold, and every publish
//     carries the expected last sequence (revision - 1), so a message can only land at its own
//     revision and a second or deposed writer is fenced out.
//
// # History and compaction
//
// The stream holds revisions [First, Last]. Revisions below First are gone, either because the
// stream's limits (max age, max bytes) dropped them or because ingest found the member compacted
// past the log's end and moved the log forward (Jump). Either way the log's compact revision is
// First-1: a watch that starts below it gets etcd's "compacted" answer, exactly as if etcd had
// been compacted at that revision, and may restart from it.
package eventlog
