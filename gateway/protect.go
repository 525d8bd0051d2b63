package gateway

import "google.golang.org/grpc"

// Protection limits what one client may ask of a replica. The zero value sets no limits.
type Protection struct{}

func (p *Protection) validate() error { return nil }

// protection returns the server options that enforce s.o.Protection.
func (s *Server) protection() []grpc.ServerOption { return nil }
