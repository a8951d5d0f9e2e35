// Command vsagent-hook is libvirt's qemu hook for vsagent. Installed as
// /etc/libvirt/hooks/qemu.d/vsagent, libvirt runs it as
//
//	vsagent-hook DOMAIN OP SUB-OP EXTRA   (domain XML on stdin)
//
// and waits for it while it holds the domain's job. It never calls libvirt:
// it asks the running agent over its root-only hook socket and turns the
// answer into an exit status (0 lets libvirt proceed, 1 cancels with the
// message on stderr) and, for migrate and restore, the domain XML on
// stdout. When the agent does not answer in time, [agent] hook_failure
// decides for guests that need inspection. See docs/hooks.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"syscall"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/hookapi"
)

// ConfigEnv overrides the configuration file the hook reads for the
// socket path and hook_failure.
const ConfigEnv = "VSAGENT_CONFIG"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	h := hook{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, configPath: config.DefaultPath, notify: journalNotify}
	if p := os.Getenv(ConfigEnv); p != "" {
		h.configPath = p
	}
	os.Exit(h.run(ctx, os.Args[1:]))
}

type hook struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	configPath     string
	// notify records a fail-open decision where operators look for it.
	notify func(msg string, req hookapi.Request)
}

func (h hook) run(ctx context.Context, args []string) int {
	if len(args) < 3 {
		fmt.Fprintln(h.stderr, "usage: vsagent-hook DOMAIN OP SUB-OP [EXTRA] < domain.xml (run by libvirt as a qemu hook)")
		return 2
	}
	req := hookapi.Request{Domain: args[0], Op: args[1], SubOp: args[2]}
	if len(args) > 3 {
		req.Extra = args[3]
	}
	if !hookapi.Forwarded(req.Op, req.SubOp) {
		// libvirt may still be writing the XML; reading it spares it EPIPE.
		_, _ = io.Copy(io.Discard, io.LimitReader(h.stdin, hookapi.MaxMessage))
		return 0
	}
	xml, err := io.ReadAll(io.LimitReader(h.stdin, hookapi.MaxMessage+1))
	if err == nil && len(xml) > hookapi.MaxMessage {
		err = fmt.Errorf("domain XML exceeds %d bytes", hookapi.MaxMessage)
	}
	if err != nil {
		return h.refuse(fmt.Sprintf("vsagent: refusing %s of guest %s: cannot read its XML: %v", req.Op, req.Domain, err))
	}
	req.XML = string(xml)

	cfg, err := config.Load(h.configPath)
	if errors.Is(err, fs.ErrNotExist) {
		// vsagent is not configured on this host: nothing to protect.
		fmt.Fprintf(h.stderr, "vsagent-hook: no configuration at %s; allowing %s of %s\n", h.configPath, req.Op, req.Domain)
		return 0
	}
	if err != nil {
		return h.refuse(fmt.Sprintf("vsagent: refusing %s of guest %s: configuration %s is invalid, so which guests need inspection is unknown:\n%v",
			req.Op, req.Domain, h.configPath, err))
	}

	ans, err := hookapi.Ask(ctx, cfg.Agent.HookSocket(), req)
	if err != nil {
		ans = hookapi.Fallback(cfg, req, err)
	}
	if ans.Verdict == hookapi.Allow && ans.Message != "" {
		// A fail-open decision, the hook's own or the agent's.
		h.notify(ans.Message, req)
		fmt.Fprintln(h.stderr, ans.Message)
	}
	if ans.Verdict == hookapi.Refuse {
		return h.refuse(ans.Message)
	}
	if ans.XML != "" && (req.Op == hookapi.OpMigrate || req.Op == hookapi.OpRestore) {
		if _, err := io.WriteString(h.stdout, ans.XML); err != nil {
			return h.refuse(fmt.Sprintf("vsagent: refusing %s of guest %s: cannot hand libvirt the rewritten XML: %v", req.Op, req.Domain, err))
		}
	}
	return 0
}

func (h hook) refuse(msg string) int {
	if msg == "" {
		msg = "vsagent: refused without a reason"
	}
	fmt.Fprintln(h.stderr, msg)
	return 1
}

// journalNotify sends a fail-open decision to the journal with fields that
// can be filtered on; without a journal the stderr line is all there is.
func journalNotify(msg string, req hookapi.Request) {
	if !journal.Enabled() {
		return
	}
	_ = journal.Send(msg, journal.PriWarning, map[string]string{
		"SYSLOG_IDENTIFIER": "vsagent-hook",
		"VSAGENT_EVENT":     "hook-fail-open",
		"VSAGENT_GUEST":     req.Domain,
		"VSAGENT_HOOK_OP":   req.Op,
	})
}
