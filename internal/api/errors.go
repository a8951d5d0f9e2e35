package api

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound: the guest, domain or path asked about does not exist.
	// Providers wrap it; the server answers 404 and the client's *Error
	// matches it with errors.Is.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: the agent cannot answer right now (for example, it is
	// not connected to libvirt). The server answers 503.
	ErrUnavailable = errors.New("unavailable")
	// ErrUnreachable: the client could not talk to the agent at all: no
	// socket, nobody listening, or the connection broke.
	ErrUnreachable = errors.New("cannot reach the agent")
	// ErrRefused: the agent refused this client (its uid is not allowed).
	ErrRefused = errors.New("refused by the agent")
)

// Error is an error answer from the agent, as the client sees it.
type Error struct {
	Status  int // HTTP status
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("agent: %s", e.Message)
}

// Is lets errors.Is(err, ErrNotFound) and friends work on answers.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Code == CodeNotFound
	case ErrUnavailable:
		return e.Code == CodeUnavailable
	case ErrRefused:
		return e.Code == CodeForbidden
	}
	return false
}
