// Package bench measures watchgate against direct etcd on the same machine in the same run.
//
// The Go benchmarks here cover the spine: ingest throughput (etcd revisions per second into the
// event log) and put-to-watch-event latency through a gateway replica compared with a watch on
// etcd itself. Run them with:
//
//	go test ./bench -run '^$' -bench . -benchtime 5000x
//
// CI runs every benchmark once (-benchtime=1x) so none of them rots.
package bench
