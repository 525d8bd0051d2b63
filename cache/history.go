package cache

import (
	"errors"
	"fmt"
)

// ErrNotNext is returned by Append when the revision does not follow Newest.
var ErrNotNext = errors.New("cache: revision does not follow the newest in history")

// History is a ring of recent revisions bounded by count and bytes. T is the caller's
// representation of one revision.
type History[T any] struct {
	maxLen   int
	maxBytes int64

	buf   []entry[T] // ring storage, len(buf) == maxLen once grown
	head  int        // index of the oldest entry
	n     int        // entries held
	bytes int64      // sum of sizes held
}

type entry[T any] struct {
	rev  int64
	size int64
	v    T
}

// NewHistory returns a ring holding at most maxLen revisions and, beyond the newest one, at most
// maxBytes bytes (the newest revision is always kept, whatever its size). maxLen must be > 0;
// maxBytes <= 0 means no byte bound.
func NewHistory[T any](maxLen int, maxBytes int64) *History[T] {
	if maxLen <= 0 {
		panic(fmt.Sprintf("cache: history length %d", maxLen))
	}
	return &History[T]{maxLen: maxLen, maxBytes: maxBytes}
}

// Cap is the most revisions the ring holds.
func (h *History[T]) Cap() int { return h.maxLen }

// Len is the number of revisions held.
func (h *History[T]) Len() int { return h.n }

// Bytes is the sum of the sizes of the revisions held.
func (h *History[T]) Bytes() int64 { return h.bytes }

// Oldest is the oldest revision held, or 0 when empty.
func (h *History[T]) Oldest() int64 {
	if h.n == 0 {
		return 0
	}
	return h.buf[h.head].rev
}

// Newest is the newest revision held, or 0 when empty.
func (h *History[T]) Newest() int64 {
	if h.n == 0 {
		return 0
	}
	return h.at(h.n - 1).rev
}

func (h *History[T]) at(i int) *entry[T] { return &h.buf[(h.head+i)%len(h.buf)] }

// Append adds revision rev of the given size, evicting the oldest revisions beyond the bounds.
// rev must be Newest+1 unless the ring is empty.
func (h *History[T]) Append(rev int64, v T, size int64) error {
	if h.n > 0 && rev != h.Newest()+1 {
		return fmt.Errorf("%w: got %d after %d", ErrNotNext, rev, h.Newest())
	}
	if h.n == h.maxLen {
		h.evict()
	}
	if len(h.buf) < h.maxLen && h.n == len(h.buf) {
		h.grow()
	}
	*h.at(h.n) = entry[T]{rev: rev, size: size, v: v}
	h.n++
	h.bytes += size
	for h.maxBytes > 0 && h.bytes > h.maxBytes && h.n > 1 {
		h.evict()
	}
	return nil
}

// grow doubles the storage (up to maxLen), so a large bound costs nothing until it is used.
func (h *History[T]) grow() {
	size := min(max(2*len(h.buf), 64), h.maxLen)
	nb := make([]entry[T], size)
	for i := range h.n {
		nb[i] = *h.at(i)
	}
	h.buf, h.head = nb, 0
}

func (h *History[T]) evict() {
	e := &h.buf[h.head]
	h.bytes -= e.size
	*e = entry[T]{}
	h.head = (h.head + 1) % len(h.buf)
	h.n--
}

// Get returns revision rev if it is held.
func (h *History[T]) Get(rev int64) (T, bool) {
	if h.n == 0 || rev < h.Oldest() || rev > h.Newest() {
		var zero T
		return zero, false
	}
	return h.at(int(rev - h.Oldest())).v, true
}

// From appends to dst up to limit revisions starting at rev, in order, and returns it. It
// returns dst unchanged if rev is not held.
func (h *History[T]) From(dst []T, rev int64, limit int) []T {
	if h.n == 0 || rev < h.Oldest() {
		return dst
	}
	for i := int(rev - h.Oldest()); i < h.n && limit > 0; i++ {
		dst = append(dst, h.at(i).v)
		limit--
	}
	return dst
}

// Reset drops every revision.
func (h *History[T]) Reset() {
	clear(h.buf)
	h.head, h.n, h.bytes = 0, 0, 0
}
