package gateway

// group is the synced watchers that share one set of options: per revision they get the same
// events, encoded once.
type group struct {
	opts     watchOpts
	watchers map[*watcher]struct{}
	mark     int64 // the last revision dispatched to this group (so a group is visited once)
}

// index finds the synced watchers a revision concerns without looking at the others: groups of
// single-key watchers are found by key, one map lookup per event; groups watching a range are
// few (one per distinct range and options, however many watchers share it) and are checked
// against each revision. Guarded by hub.mu.
type index struct {
	groups map[watchOpts]*group
	exact  map[string][]*group // single-key groups, by key
	ranges []*group            // range groups
	size   int                 // synced watchers
	found  []*group            // scratch for each
}

func newIndex() *index {
	return &index{groups: make(map[watchOpts]*group), exact: make(map[string][]*group)}
}

func (x *index) add(w *watcher) {
	g := x.groups[w.watchOpts]
	if g == nil {
		g = &group{opts: w.watchOpts, watchers: make(map[*watcher]struct{})}
		x.groups[w.watchOpts] = g
		if g.opts.single() {
			x.exact[g.opts.key] = append(x.exact[g.opts.key], g)
		} else {
			x.ranges = append(x.ranges, g)
		}
	}
	g.watchers[w] = struct{}{}
	w.group = g
	x.size++
}

// remove takes w out of the index; it does nothing if w is not in it.
func (x *index) remove(w *watcher) {
	g := w.group
	if g == nil {
		return
	}
	w.group = nil
	delete(g.watchers, w)
	x.size--
	if len(g.watchers) > 0 {
		return
	}
	delete(x.groups, g.opts)
	if g.opts.single() {
		x.exact[g.opts.key] = without(x.exact[g.opts.key], g)
		if len(x.exact[g.opts.key]) == 0 {
			delete(x.exact, g.opts.key)
		}
	} else {
		x.ranges = without(x.ranges, g)
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
		for _, g := range x.exact[string(ev.Kv.Key)] {
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
