package cache

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestHistoryBounds(t *testing.T) {
	tests := []struct {
		name       string
		maxLen     int
		maxBytes   int64
		sizes      []int64 // revisions 10, 11, ... with these sizes
		wantOldest int64
		wantLen    int
		wantBytes  int64
	}{
		{name: "under bounds", maxLen: 4, sizes: []int64{1, 1, 1}, wantOldest: 10, wantLen: 3, wantBytes: 3},
		{name: "count bound", maxLen: 3, sizes: []int64{1, 1, 1, 1, 1}, wantOldest: 12, wantLen: 3, wantBytes: 3},
		{name: "byte bound", maxLen: 100, maxBytes: 10, sizes: []int64{4, 4, 4, 4}, wantOldest: 12, wantLen: 2, wantBytes: 8},
		{name: "oversized newest kept", maxLen: 100, maxBytes: 10, sizes: []int64{4, 50}, wantOldest: 11, wantLen: 1, wantBytes: 50},
		{name: "grows past initial storage", maxLen: 1000, sizes: make([]int64, 300), wantOldest: 10, wantLen: 300},
		{name: "wraps many times", maxLen: 70, sizes: make([]int64, 1000), wantOldest: 940, wantLen: 70},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHistory[int64](tt.maxLen, tt.maxBytes)
			for i, s := range tt.sizes {
				if err := h.Append(int64(10+i), int64(10+i), s); err != nil {
					t.Fatal(err)
				}
			}
			got := []int64{h.Oldest(), int64(h.Len()), h.Bytes(), h.Newest()}
			want := []int64{tt.wantOldest, int64(tt.wantLen), tt.wantBytes, int64(10 + len(tt.sizes) - 1)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("oldest, len, bytes, newest (-want +got):\n%s", diff)
			}
			// Every held revision maps to its own value, in order.
			all := h.From(nil, h.Oldest(), h.Len()+5)
			for i, v := range all {
				if v != h.Oldest()+int64(i) {
					t.Fatalf("From[%d] = %d, want %d", i, v, h.Oldest()+int64(i))
				}
				if g, ok := h.Get(v); !ok || g != v {
					t.Fatalf("Get(%d) = %d, %v", v, g, ok)
				}
			}
		})
	}
}

func TestHistoryRefusesOutOfSequence(t *testing.T) {
	h := NewHistory[string](8, 0)
	if err := h.Append(5, "a", 1); err != nil {
		t.Fatal(err)
	}
	for _, rev := range []int64{5, 7, 4} {
		if err := h.Append(rev, "x", 1); !errors.Is(err, ErrNotNext) {
			t.Errorf("Append(%d) = %v, want ErrNotNext", rev, err)
		}
	}
	h.Reset()
	if err := h.Append(42, "b", 1); err != nil {
		t.Fatalf("Append after Reset: %v", err)
	}
	if _, ok := h.Get(5); ok {
		t.Fatal("revision 5 still held after Reset")
	}
}

func TestHistoryFrom(t *testing.T) {
	h := NewHistory[int64](5, 0)
	for r := int64(1); r <= 8; r++ {
		if err := h.Append(r, r, 1); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		from  int64
		limit int
		want  []int64
	}{
		{from: 4, limit: 10, want: []int64{4, 5, 6, 7, 8}},
		{from: 6, limit: 2, want: []int64{6, 7}},
		{from: 3, limit: 10, want: nil}, // evicted
		{from: 9, limit: 10, want: nil}, // not yet
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, h.From(nil, tt.from, tt.limit)); diff != "" {
			t.Errorf("From(%d, %d) (-want +got):\n%s", tt.from, tt.limit, diff)
		}
	}
}
