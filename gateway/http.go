package gateway

import (
	"fmt"
	"net/http"
)

// HTTPHandler serves /healthz (the process is up), /readyz (the replica has caught up with the
// event log, so its watches and revisions are current) and, if metrics is not nil, /metrics.
func (s *Server) HTTPHandler(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		applied, ready := s.hub.status()
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "catching up with the event log (applied revision %d)\n", applied)
			return
		}
		fmt.Fprintf(w, "ok (applied revision %d)\n", applied)
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}
