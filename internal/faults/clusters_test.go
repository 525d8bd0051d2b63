package faults

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/watchgate/watchgate/internal/testenv"
)

// etcdCluster is a 3-member embedded etcd cluster whose members can be killed and restarted.
type etcdCluster struct {
	cfgs []*embed.Config

	mu      sync.Mutex
	members []*embed.Etcd // guarded by mu; nil while killed
}

func startEtcdCluster(t testing.TB, n int) *etcdCluster {
	t.Helper()
	ports := testenv.Ports(t, 2*n)
	var initial []string
	c := &etcdCluster{members: make([]*embed.Etcd, n)}
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(t.TempDir(), cfg.Name)
		cfg.UnsafeNoFsync = true
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		curl := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(ports[2*i])}
		purl := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(ports[2*i+1])}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{purl}, []url.URL{purl}
		initial = append(initial, cfg.Name+"="+purl.String())
		c.cfgs = append(c.cfgs, cfg)
	}
	for _, cfg := range c.cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = c.start(i) })
	}
	wg.Wait()
	t.Cleanup(func() {
		for i := range n {
			c.kill(i)
		}
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c *etcdCluster) start(i int) error {
	e, err := embed.StartEtcd(c.cfgs[i])
	if err != nil {
		return fmt.Errorf("etcd member %d: %w", i, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcd member %d: %w", i, err)
	case <-time.After(time.Minute):
		e.Close()
		return fmt.Errorf("etcd member %d did not become ready", i)
	}
	c.mu.Lock()
	c.members[i] = e
	c.mu.Unlock()
	return nil
}

// Endpoints are the members' client URLs.
func (c *etcdCluster) Endpoints() []string {
	var out []string
	for _, cfg := range c.cfgs {
		out = append(out, cfg.AdvertiseClientUrls[0].String())
	}
	return out
}

// Leader returns the index of the member that leads.
func (c *etcdCluster) Leader(t testing.TB) int {
	t.Helper()
	for range 500 {
		c.mu.Lock()
		for i, m := range c.members {
			if m != nil && m.Server.Leader() == m.Server.MemberID() {
				c.mu.Unlock()
				return i
			}
		}
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond) // polling an election, not timing logic
	}
	t.Fatal("no etcd leader")
	return -1
}

// Kill stops member i at once, without handing over its leadership.
func (c *etcdCluster) Kill(t testing.TB, i int) { c.kill(i) }

func (c *etcdCluster) kill(i int) {
	c.mu.Lock()
	m := c.members[i]
	c.members[i] = nil
	c.mu.Unlock()
	if m != nil {
		m.Server.HardStop()
		m.Close()
	}
}

// Restart starts member i again on its data dir and addresses.
func (c *etcdCluster) Restart(t testing.TB, i int) {
	t.Helper()
	if err := c.start(i); err != nil {
		t.Fatal(err)
	}
}
