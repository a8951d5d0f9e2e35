// Command vsactl is the operator's command line for a running vsagent: it
// asks the agent over its control socket for status, guests, appliances,
// flows, events and policy explanations, as tables or as JSON.
//
// Exit status: 0 success; 1 the agent answered with an error, or what was
// asked about does not exist; 2 usage error; 3 the agent cannot be reached
// (no socket, not running, permission refused, or an unreadable answer).
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], env{
		stdout: os.Stdout,
		stderr: os.Stderr,
		getenv: os.Getenv,
		now:    time.Now,
		loc:    time.Local,
	})
	stop()
	os.Exit(code)
}

// env is everything run touches outside its arguments, so that tests can
// pin the clock and capture the output.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
	loc            *time.Location
}
