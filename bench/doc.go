// Package bench is watchgate's benchmark harness: every performance figure the project states
// comes from here, measured against direct etcd and etcd's gRPC proxy on the same machine in the
// same run, and reported as ratios.
//
// `watchgate bench <scenario>` (see Run and the scenario types) starts each target on a fresh
// etcd, drives it with the same clientv3 load generator, and reads each server process's CPU
// time and memory from the operating system. The servers run as child processes of the binary
// itself (ServeIfChild), so the load generator's own cost is measured apart and shown.
//
// The Go benchmarks here cover the spine end to end (ingest throughput, put-to-watch-event
// latency); the hot paths have theirs beside their code (eventlog, gateway, cache). Run them with:
//
//	go test ./bench -run '^$' -bench . -benchtime 5000x
//
// CI runs every benchmark once (-benchtime=1x) so none of them rots, and each scenario has a
// smoke test at tiny sizes that checks it ran and counted correctly.
package bench
