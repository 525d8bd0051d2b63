// Package cache holds the in-memory state a gateway replica derives from the event log.
//
// It is pure: no gRPC, no NATS, no etcd client. The replica's log consumer is its only writer;
// readers are the watch dispatcher and watchers catching up.
//
// # History
//
// History is a ring of the most recent revisions, bounded both by count and by bytes. It holds
// a contiguous run of revisions [Oldest, Newest]: appending out of sequence is refused, and a
// hole in the log (revisions dropped by retention or compaction) is handled by the caller with
// Reset. Watchers that start, or fall, behind Oldest must read older revisions from the event
// log itself.
//
// # Concurrency properties
//
// History is not safe for concurrent use; the gateway guards it with its dispatcher's lock.
package cache
