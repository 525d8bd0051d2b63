// Package gateway is a watchgate replica: a gRPC server speaking etcd's v3 API to clients.
//
// # What it serves
//
//   - Watch is served from the event log, never from an etcd watch. The replica runs one ordered
//     consumer of the log (the s-watcher, see hub) and multiplexes every client watch stream and
//     watcher onto it, with a history ring for watchers that start in the recent past and the
//     log itself for older history.
//   - Range is answered from the replica's keyspace cache with etcd's consistency and results
//     (reads.go, keyspace.go, probe.go); what the cache cannot answer exactly passes through.
//   - Writes, Lease, Maintenance.Status pass through to the member cluster with etcd's
//     responses and errors unchanged; Status reports at least version 3.5.13 because the
//     replica itself answers the watch features clients gate on that version.
//   - Optional per-client limits (protect.go) guard every call.
//   - Cluster.MemberList reports this replica's advertised client URL.
//
// # Watch guarantees
//
// For the watchers it covers, a replica gives etcd's guarantees: events are ordered by
// revision, each revision at most once per watcher and with all of the watcher's events of that
// revision in one response (atomic), without gaps (reliable), resumable from any retained
// revision on any replica (the log is the one revision space). A start revision older than the
// log holds is answered as etcd answers a compacted one: canceled with CompactRevision set.
// StartRevision 0 means "after etcd's current revision", read linearizably from the member.
//
// # Concurrency properties
//
// Delivery never blocks the log consumer: each stream has a bounded queue; a watcher whose
// stream is full leaves the synced set and catches up from history on its own goroutine, so a
// client that stops reading costs only its own queue and never delays other watchers.
package gateway
