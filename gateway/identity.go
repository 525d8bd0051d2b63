package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash/maphash"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// Who a client is, for the protection tier's limits (see Protection), and the bounded tables
// that remember clients and the tokens etcd accepted.

// identify names the client of the call ctx as identity does, trusting the tokens etcd
// accepted while its auth is on; with auth off it forgets them, since etcd then accepts any.
func (g *guard) identify(ctx context.Context) (id, pending string) {
	if g.tokens == nil {
		return identity(ctx, nil)
	}
	if !g.authOn() {
		g.tokens.forgetAll()
		return identity(ctx, nil)
	}
	return identity(ctx, g.tokens.known)
}

// identity names the client of the call ctx (see Protection). known reports whether etcd has
// accepted a token, by its digest; nil when tokens identify no one (etcd's auth off). pending
// is the digest of the call's token when it would identify the client but etcd has not
// accepted it yet, so that the caller can learn it from the call's answer; else "".
func identity(ctx context.Context, known func(tok string) bool) (id, pending string) {
	p, _ := peer.FromContext(ctx)
	if p != nil {
		if cn := certName(p.AuthInfo); cn != "" {
			return "cn:" + bounded(cn), ""
		}
	}
	if known != nil {
		if tok := authToken(ctx); tok != "" {
			d := digest(tok)
			if known(d) {
				return "token:" + d, ""
			}
			pending = d
		}
	}
	if p != nil && p.Addr != nil {
		return "addr:" + bounded(hostOf(p.Addr)), pending
	}
	return "unknown", pending
}

// certName is the Common Name of the client's TLS certificate, if the server verified it: the
// leaf of the first verified chain. A certificate presented but not verified has none.
func certName(ai credentials.AuthInfo) string {
	info, ok := ai.(credentials.TLSInfo)
	if !ok {
		return ""
	}
	if ch := info.State.VerifiedChains; len(ch) > 0 && len(ch[0]) > 0 {
		return ch[0][0].Subject.CommonName
	}
	return ""
}

// authToken is the call's etcd auth token, found where etcd looks for it (etcd's
// AuthInfoFromCtx): the first "token" value, else the first "authorization" value, less a
// "Bearer " prefix.
func authToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(rpctypes.TokenFieldNameGRPC)
	if len(v) == 0 {
		v = md.Get(rpctypes.TokenFieldNameSwagger)
	}
	if len(v) == 0 {
		return ""
	}
	return strings.TrimPrefix(v[0], "Bearer ")
}

// tokenChecked reports whether a success of method proves its token good: it is a unary KV
// call, which etcd answers only after checking the caller's token (a Range, or a read-only
// Txn, before reading; the others before proposing), and which the replica passes through,
// token and all (reads.go sends every Range carrying a token to etcd). Not so MemberList,
// for one: etcd answers it without looking at the token.
func tokenChecked(method string) bool {
	switch method {
	case pb.KV_Range_FullMethodName, pb.KV_Put_FullMethodName, pb.KV_DeleteRange_FullMethodName,
		pb.KV_Txn_FullMethodName, pb.KV_Compact_FullMethodName:
		return true
	}
	return false
}

// hostOf is addr's IP address (IPv4-mapped IPv6 as IPv4), or addr as a whole if it has none.
func hostOf(addr net.Addr) string {
	var ap netip.AddrPort
	if tcp, ok := addr.(*net.TCPAddr); ok {
		ap = tcp.AddrPort()
	} else if parsed, err := netip.ParseAddrPort(addr.String()); err == nil {
		ap = parsed
	}
	if !ap.Addr().IsValid() {
		return addr.String()
	}
	return ap.Addr().Unmap().WithZone("").String()
}

// maxNameBytes bounds the names kept as identities; longer ones are kept as a digest.
const maxNameBytes = 128

func bounded(name string) string {
	if len(name) <= maxNameBytes {
		return name
	}
	return "#" + digest(name)
}

// digest is a short hash of s, for names too long (or too secret) to keep.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}

// is safe for concurrent use.
type knownTokens struct {
	set *lruTable[struct{}]
	// held is whether the set may hold tokens: set after each add, cleared by forgetAll
	// before it empties the set, so that forgetting an empty set costs one load.
	held atomic.Bool
}

// known reports whether etcd accepted tok, counting as a use of it.
func (k *knownTokens) known(tok string) bool { return k.set.has(tok) }

func (k *knownTokens) add(tok string) {
	k.set.add(tok, struct{}{})
	k.held.Store(true)
}

func (k *knownTokens) forgetAll() {
	if k.held.Load() && k.held.Swap(false) {
		k.set.purge()
	}
}

// tableShards splits each table so concurrent requests rarely wait on one lock.
const tableShards = 16

// lruTable maps at most about size keys to values, the least recently used dropped first.
// It is safe for concurrent use.
type lruTable[V any] struct {
	seed   maphash.Seed
	shards [tableShards]lruShard[V]
}

type lruShard[V any] struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, V] // guarded by mu
}

func newLRUTable[V any](size int) *lruTable[V] {
	t := &lruTable[V]{seed: maphash.MakeSeed()}
	for i := range t.shards {
		lru, err := simplelru.NewLRU[string, V](max(1, size/tableShards), nil)
		if err != nil {
			panic(err) // only for a size under 1
		}
		t.shards[i].lru = lru
	}
	return t
}

func (t *lruTable[V]) shard(key string) *lruShard[V] {
	return &t.shards[maphash.String(t.seed, key)%tableShards]
}

// get returns key's value, adding one made by newV if the table has none.
func (t *lruTable[V]) get(key string, newV func() V) V {
	sh := t.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	v, ok := sh.lru.Get(key)
	if !ok {
		v = newV()
		sh.lru.Add(key, v)
	}
	return v
}

// has reports whether the table holds key, counting as a use of it.
func (t *lruTable[V]) has(key string) bool {
	sh := t.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	_, ok := sh.lru.Get(key)
	return ok
}

// add sets key's value.
func (t *lruTable[V]) add(key string, v V) {
	sh := t.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.lru.Add(key, v)
}

// purge empties the table.
func (t *lruTable[V]) purge() {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		sh.lru.Purge()
		sh.mu.Unlock()
	}
}

// len is how many keys the table holds.
func (t *lruTable[V]) len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += sh.lru.Len()
		sh.mu.Unlock()
	}
	return n
}
