// Package cache holds the in-memory state a gateway replica derives from the event log.
//
// It is pure: no gRPC, no NATS, no etcd client. The replica's log consumer is its only writer;
// readers are the watch dispatcher, watchers catching up and Range requests.
//
// # History
//
// History is a ring of the most recent revisions, bounded both by count and by bytes. It holds
// a contiguous run of revisions [Oldest, Newest]: appending out of sequence is refused, and a
// hole in the log (revisions dropped by retention or compaction) is handled by the caller with
// Reset. Watchers that start, or fall, behind Oldest must read older revisions from the event
// log itself.
//
// # Keyspace
//
// Keyspace is the current keyspace of the cached prefixes, key to latest KeyValue, at one
// revision: loaded from a snapshot of the member, then moved forward revision by revision.
// View.Range answers any valid RangeRequest from it as etcd would, at its revision or, rolled
// back through the newer events' prev_kv, at an older one.
//
// # Responses
//
// Responses holds encoded range responses for reuse, bounded by bytes, each dropped by the
// first revision that touches its range. Its index of ranges is bounded too (per key, per
// prefix, prefix lengths, other ranges), so the work each revision costs stays small whatever
// clients ask; a response with no room in the index is answered but not kept.
//
// # Concurrency properties
//
// History is not safe for concurrent use; the gateway guards it with its dispatcher's lock.
// Keyspace and Responses are safe for concurrent use (see each).
package cache
