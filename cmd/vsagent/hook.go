package main

import (
	"context"
	"fmt"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/hookapi"
)

// serveHook answers libvirt's qemu hook (vsagent-hook) on its own root-only
// socket, so a guest's start never queues behind an operator's request.
// It listens before the first resync ends: a guest started meanwhile must
// still be held before its vCPUs run.
func (d *daemon) serveHook(ctx context.Context, cfg *config.Config, ag *agent.Agent) error {
	ln, err := api.Listen(ctx, cfg.Agent.HookSocket())
	if err != nil {
		return fmt.Errorf("hook socket: %w", err)
	}
	go func() {
		if err := hookapi.Serve(ctx, ln, hookapi.NewHandler(ag), d.log); err != nil {
			d.log.Error("hook socket stopped; libvirt's hook applies hook_failure", "error", err)
		}
	}()
	return nil
}
