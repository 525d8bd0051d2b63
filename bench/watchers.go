package bench

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchSet spreads watchers over streams over connections, the way a large client does: each
// stream is a clientv3.Watcher of its own (one gRPC watch stream), streams are dealt round-robin
// over the connections, and watcher i goes on stream i mod streams.
type watchSet struct {
	clients []*clientv3.Client
	streams []clientv3.Watcher

	created  counter
	errs     counter
	firstErr atomic.Pointer[error]
	wg       sync.WaitGroup
}

func openWatchSet(ctx context.Context, endpoint string, conns, streams int) (*watchSet, error) {
	cs, err := dial(ctx, endpoint, conns)
	if err != nil {
		return nil, err
	}
	ws := &watchSet{clients: cs}
	for i := range streams {
		ws.streams = append(ws.streams, clientv3.NewWatcher(cs[i%len(cs)]))
	}
	return ws, nil
}

// watch opens watcher i and serves its responses on a goroutine of its own until ctx ends or
// the watch fails: its created response to onCreated (if not nil), the others to onEvents.
// Created responses are also counted in ws.created; failures (other than ctx ending) in
// ws.errs, the first one kept.
func (ws *watchSet) watch(ctx context.Context, i int, key string, onCreated func(), onEvents func(clientv3.WatchResponse), opts ...clientv3.OpOption) {
	opts = append(opts, clientv3.WithCreatedNotify())
	ch := ws.streams[i%len(ws.streams)].Watch(ctx, key, opts...)
	ws.wg.Go(func() {
		for resp := range ch {
			if resp.Created {
				if onCreated != nil {
					onCreated()
				}
				ws.created.Add(1)
				continue
			}
			if err := resp.Err(); err != nil {
				if ctx.Err() == nil {
					ws.fail(err)
				}
				return
			}
			onEvents(resp)
		}
		if ctx.Err() == nil {
			ws.fail(errors.New("watch channel closed"))
		}
	})
}

func (ws *watchSet) fail(err error) {
	ws.errs.Add(1)
	ws.firstErr.CompareAndSwap(nil, &err)
}

// err is the first watch failure, if any.
func (ws *watchSet) err() error {
	if p := ws.firstErr.Load(); p != nil {
		return *p
	}
	return nil
}

// close cancels nothing itself: callers cancel the ctx they passed to watch first. It closes the
// streams and connections and waits for the watcher goroutines.
func (ws *watchSet) close() {
	for _, w := range ws.streams {
		w.Close()
	}
	closeAll(ws.clients)
	ws.wg.Wait()
}
