package gateway

import clientv3 "go.etcd.io/etcd/client/v3"

// group is the synced watchers that share one set of options: per revision they get the same
// events, encoded once.
type group struct {
	opts     watchOpts
	watchers []*watcher // each watcher's slot is its index here
	mark     int64      // the last revision dispatched to this group (so a group is visited once)
	variant  *group     // the next group on the same key, with other options (single-key groups)
}

// index finds the synced watchers a revision concerns without looking at the others: groups of
// single-key watchers are found by key, one map lookup per event; groups watching a prefix (the
// usual range: a Kubernetes resource type, a namespace) are found by looking each event key's
// prefixes up, one lookup per distinct prefix length in use; the remaining ranges (arbitrary
// [key, end) and from-key) are few (one group per distinct range and options, however many
// watchers share it) and are checked against each revision. It is kept small, since most
// watchers sit idle in it: a watcher costs a slot in its group's slice, and a key's first
// watcher a group and a map entry; a key's other option variants are chained from its first
// group. Guarded by hub.mu.
type index struct {
	exact    map[string]*group // single-key groups, by key: the first of the key's option variants
	prefixes map[string]*group // prefix groups, by prefix, likewise
	lengths  map[int]int       // prefix lengths in use, with their number of prefixes
	ranges   []*group          // other range groups, scanned
	size     int               // synced watchers
	found    []*group          // scratch for each
}

func newIndex() *index {
	return &index{exact: make(map[string]*group), prefixes: make(map[string]*group), lengths: make(map[int]int)}
}

// isPrefix reports whether opts watch every key with their key as prefix, and nothing else.
func (o *watchOpts) isPrefix() bool {
	return o.end != "" && o.end != fromKeyEnd && o.end == clientv3.GetPrefixRangeEnd(o.key)
}

// chains returns the map a group with opts is chained in (nil for the scanned ranges).
func (x *index) chains(o *watchOpts) map[string]*group {
	switch {
	case o.single():
		return x.exact
	case o.isPrefix():
		return x.prefixes
	}
	return nil
}

// groupFor returns the group for opts, creating it if there is none.
func (x *index) groupFor(opts watchOpts) *group {
	if m := x.chains(&opts); m != nil {
		first := m[opts.key]
		for g := first; g != nil; g = g.variant {
			if g.opts == opts {
				return g
			}
		}
		g := &group{opts: opts, variant: first}
		m[opts.key] = g
		if first == nil && opts.isPrefix() {
			x.lengths[len(opts.key)]++
		}
		return g
	}
	for _, g := range x.ranges {
		if g.opts == opts {
			return g
		}
	}
	g := &group{opts: opts}
	x.ranges = append(x.ranges, g)
	return g
}

func (x *index) add(w *watcher) {
	g := x.groupFor(w.watchOpts)
	w.group, w.slot = g, len(g.watchers)
	g.watchers = append(g.watchers, w)
	x.size++
}

// remove takes w out of the index; it does nothing if w is not in it.
func (x *index) remove(w *watcher) {
	g := w.group
	if g == nil {
		return
	}
	last := g.watchers[len(g.watchers)-1]
	g.watchers[w.slot], last.slot = last, w.slot
	g.watchers[len(g.watchers)-1] = nil
	g.watchers = g.watchers[:len(g.watchers)-1]
	w.group = nil
	x.size--
	if len(g.watchers) > 0 {
		return
	}
	m := x.chains(&g.opts)
	if m == nil {
		x.ranges = without(x.ranges, g)
		return
	}
	first := m[g.opts.key]
	switch {
	case first == g && g.variant == nil:
		delete(m, g.opts.key)
		if g.opts.isPrefix() {
			if x.lengths[len(g.opts.key)]--; x.lengths[len(g.opts.key)] == 0 {
				delete(x.lengths, len(g.opts.key))
			}
		}
	case first == g:
		m[g.opts.key] = g.variant
	default:
		for p := first; p != nil; p = p.variant {
			if p.variant == g {
				p.variant = g.variant
				break
			}
		}
	}
}

func without(gs []*group, g *group) []*group {
	for i, h := range gs {
		if h == g {
			gs[i] = gs[len(gs)-1]
			gs[len(gs)-1] = nil
			return gs[:len(gs)-1]
		}
	}
	return gs
}

// each calls fn once for every group with a watcher that some event of r may concern. fn may
// remove watchers from the index.
func (x *index) each(r *revision, fn func(*group)) {
	found := x.found[:0]
	visit := func(g *group) {
		if g.mark != r.rev {
			g.mark = r.rev
			found = append(found, g)
		}
	}
	for _, ev := range r.events {
		key := ev.Kv.Key
		for g := x.exact[string(key)]; g != nil; g = g.variant {
			visit(g)
		}
		for n := range x.lengths {
			if n <= len(key) {
				for g := x.prefixes[string(key[:n])]; g != nil; g = g.variant {
					visit(g)
				}
			}
		}
	}
	for _, g := range x.ranges {
		for _, ev := range r.events {
			if g.opts.matches(ev.Kv.Key) {
				visit(g)
				break
			}
		}
	}
	for i, g := range found {
		fn(g)
		found[i] = nil
	}
	x.found = found[:0]
}

// all calls fn for every synced watcher. fn may remove watchers from the index.
func (x *index) all(fn func(*watcher)) {
	var ws []*watcher
	for _, m := range []map[string]*group{x.exact, x.prefixes} {
		for _, first := range m {
			for g := first; g != nil; g = g.variant {
				ws = append(ws, g.watchers...)
			}
		}
	}
	for _, g := range x.ranges {
		ws = append(ws, g.watchers...)
	}
	for _, w := range ws {
		fn(w)
	}
}
