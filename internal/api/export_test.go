package api

import (
	"context"
	"net/http"
)

// ServeAsPeer lets tests drive the handler directly, as if the request had
// come through Serve from a peer with the given uid.
func ServeAsPeer(s *Server, w http.ResponseWriter, r *http.Request, uid uint32) {
	pc := &peerConn{peer: Peer{UID: uid}}
	s.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, pc)))
}
