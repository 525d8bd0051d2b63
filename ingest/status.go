package ingest

import (
	"context"
	"errors"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchgate/watchgate/eventlog"
)

// Status is what `watchgate ingest status` and a worker's /status page show.
type Status struct {
	// Name and Role describe the worker asked, when one was: "active", "standby" (in an
	// election) or "stopped" (without one, not running). Empty when read from outside.
	Name string `json:"name,omitempty"`
	Role string `json:"role,omitempty"`
	// Active is the worker that leads the election (nil if none does); Standbys the others,
	// oldest first: the first of them takes over next. Both are empty without an election.
	Active   *Candidate  `json:"active,omitempty"`
	Standbys []Candidate `json:"standbys,omitempty"`
	// LogLast is the last revision in the event log, MemberRevision the member's current
	// revision, and Lag the difference.
	LogLast        int64 `json:"log_last"`
	MemberRevision int64 `json:"member_revision"`
	Lag            int64 `json:"lag"`
}

// StatusSource is where ReadStatus looks.
type StatusSource struct {
	// Log is the event log. Required.
	Log *eventlog.Log
	// Member is a client of the member cluster. Required.
	Member *clientv3.Client
	// Election is the client holding the election and Prefix its key prefix; nil Election
	// leaves the candidates out.
	Election *clientv3.Client
	Prefix   string
}

// ReadStatus reads the election's candidates, the log's tail and the member's revision.
func ReadStatus(ctx context.Context, src StatusSource) (Status, error) {
	var st Status
	if src.Election != nil {
		cs, err := Candidates(ctx, src.Election, src.Prefix)
		if err != nil {
			return st, err
		}
		if len(cs) > 0 {
			st.Active, st.Standbys = &cs[0], cs[1:]
		}
	}
	b, err := src.Log.Bounds(ctx)
	if err != nil {
		return st, err
	}
	r, err := src.Member.Get(ctx, "\x00", clientv3.WithCountOnly())
	if err != nil {
		return st, errors.Join(errors.New("ingest: read the member's revision"), err)
	}
	st.LogLast, st.MemberRevision = b.Last, r.Header.Revision
	st.Lag = max(0, st.MemberRevision-st.LogLast)
	return st, nil
}

// Status reports this worker's role and the deployment's ingest state as it reads it now.
func (i *Ingester) Status(ctx context.Context) (Status, error) {
	src := StatusSource{Log: i.o.Log, Member: i.o.Member}
	if i.o.Election != nil {
		src.Election, src.Prefix = i.election.Client, i.election.Prefix
	}
	st, err := ReadStatus(ctx, src)
	st.Name = i.election.Name
	switch {
	case i.Active():
		st.Role = "active"
	case i.o.Election != nil:
		st.Role = "standby"
	default:
		st.Role = "stopped"
	}
	return st, err
}
