package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Report is the result of one scenario run over its targets.
type Report struct {
	Scenario string         `json:"scenario"`
	Title    string         `json:"title"`  // the run's sizes, in words
	Params   map[string]any `json:"params"` // the same, for machines
	Machine  Machine        `json:"machine"`
	Columns  []Column       `json:"columns"`
	Rows     []Row          `json:"rows"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs int    `json:"cpus"`
	OS   string `json:"os"`
	Arch string `json:"arch"`
	Go   string `json:"go"`
}

// Column is one figure of a row.
type Column struct {
	Key    string `json:"key"`    // the key in Row.Values
	Header string `json:"header"` // the table's heading
	Digits int    `json:"-"`      // decimals shown in the table
	// Ratio shows the figure's ratio against direct etcd's next to it in the table.
	Ratio bool `json:"-"`
}

// Row is one target's figures (for scenarios with several cases, one target and case).
type Row struct {
	Target string `json:"target"`
	Case   string `json:"case,omitempty"`
	// Status is "ok", "stalled" (the target stopped making progress; the figures are partial),
	// or "failed" (Error says why; the figures, if any, are partial).
	Status string             `json:"status"`
	Error  string             `json:"error,omitempty"`
	Values map[string]float64 `json:"values"`
}

// Row statuses.
const (
	StatusOK      = "ok"
	StatusStalled = "stalled"
	StatusFailed  = "failed"
)

func thisMachine() Machine {
	return Machine{CPUs: runtime.NumCPU(), OS: runtime.GOOS, Arch: runtime.GOARCH, Go: runtime.Version()}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	// JSON has no NaN: unknown figures are left out of Values instead.
	for i := range r.Rows {
		for k, v := range r.Rows[i].Values {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				delete(r.Rows[i].Values, k)
			}
		}
	}
	return enc.Encode(r)
}

// WriteTable writes the report as a table, one row per target (and case), each figure followed
// by its ratio against direct etcd's where that is meaningful.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "%s: %s\n", r.Scenario, r.Title)
	fmt.Fprintf(w, "machine: %d CPUs, %s/%s, %s\n\n", r.Machine.CPUs, r.Machine.OS, r.Machine.Arch, r.Machine.Go)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	hasCase := false
	for _, row := range r.Rows {
		hasCase = hasCase || row.Case != ""
	}
	head := []string{"target"}
	if hasCase {
		head = append(head, "case")
	}
	head = append(head, "status")
	for _, c := range r.Columns {
		head = append(head, c.Header)
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	for _, row := range r.Rows {
		cells := []string{row.Target}
		if hasCase {
			cells = append(cells, row.Case)
		}
		cells = append(cells, row.Status)
		base := r.baseline(row.Case)
		for _, c := range r.Columns {
			cells = append(cells, formatCell(row, base, c))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, row := range r.Rows {
		if row.Error != "" {
			fmt.Fprintf(w, "\n%s %s: %s", row.Target, row.Status, row.Error)
		}
	}
	_, err := fmt.Fprintln(w)
	return err
}

// baseline is direct etcd's row for the case, if the run has one that finished.
func (r *Report) baseline(kase string) *Row {
	for i, row := range r.Rows {
		if row.Target == TargetEtcd && row.Case == kase && row.Status == StatusOK {
			return &r.Rows[i]
		}
	}
	return nil
}

func formatCell(row Row, base *Row, c Column) string {
	v, ok := row.Values[c.Key]
	if !ok || math.IsNaN(v) {
		return "-"
	}
	s := strconv.FormatFloat(v, 'f', c.Digits, 64)
	if c.Ratio && base != nil && row.Target != TargetEtcd {
		if b, ok := base.Values[c.Key]; ok && b != 0 && !math.IsNaN(b) {
			s += fmt.Sprintf(" (%.2fx)", v/b)
		}
	}
	return s
}
