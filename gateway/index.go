package gateway

// group is the synced watchers that share one set of options: per revision they get the same
// events, encoded once.
type group struct {
	opts     watchOpts
	watchers []*watcher // each watcher's slot is its index here
	mark     int64      // the last revision dispatched to this group (so a group is visited once)
	variant  *group     // the next group on the same key, with other options (single-key groups)
}

// index finds the synced watchers a revision concerns without looking at the others: groups of
// single-key watchers are found by key, one map lookup per event; groups watching a range are
// few (one per distinct range and options, however many watchers share it) and are checked
// against each revision. It is kept small, since most watchers sit idle in it: a watcher costs
// a slot in its group's slice, and a key's first watcher a group and a map entry; a key's other
// option variants are chained from its first group. Guarded by hub.mu.
type index struct {
	exact  map[string]*group // single-key groups, by key: the first of the key's option variants
	ranges []*group          // range groups
	size   int               // synced watchers
	found  []*group          // scratch for each
}

func newIndex() *index {
	return &index{exact: make(map[string]*group)}
}

// groupFor returns the group for opts, creating it if there is none.
func (x *index) groupFor(opts watchOpts) *group {
	if opts.single() {
		first := x.exact[opts.key]
		for g := first; g != nil; g = g.variant {
			if g.opts == opts {
				return g
			}
		}
		g := &group{opts: opts, variant: first}
		x.exact[opts.key] = g
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
	if !g.opts.single() {
		x.ranges = without(x.ranges, g)
		return
	}
	first := x.exact[g.opts.key]
	switch {
	case first == g && g.variant == nil:
		delete(x.exact, g.opts.key)
	case first == g:
		x.exact[g.opts.key] = g.variant
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
		for g := x.exact[string(ev.Kv.Key)]; g != nil; g = g.variant {
			visit(g)
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
	for _, first := range x.exact {
		for g := first; g != nil; g = g.variant {
			ws = append(ws, g.watchers...)
		}
	}
	for _, g := range x.ranges {
		ws = append(ws, g.watchers...)
	}
	for _, w := range ws {
		fn(w)
	}
}
