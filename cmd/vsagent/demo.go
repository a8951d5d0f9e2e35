package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/config"
)

// demoNode is an empty host for libvirt's test driver: a private, simulated
// hypervisor that needs no daemon, so the demo runs anywhere libvirt is.
const demoNode = `<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads><active>4</active><mhz>2000</mhz><model>x86_64</model></cpu><memory>8388608</memory></node>`

// runDemo plays vsagent's control-plane job on a simulated host with the
// embedded default configuration and narrates it.
func runDemo(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "usage: vsagent demo")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := demo(ctx, stdout); err != nil {
		fmt.Fprintf(stderr, "vsagent demo: %v\n", err)
		return 1
	}
	return 0
}

type narrator struct {
	w     io.Writer
	start time.Time
}

func (n *narrator) say(format string, args ...any) {
	fmt.Fprintf(n.w, "[%7.3fs] %s\n", time.Since(n.start).Seconds(), fmt.Sprintf(format, args...))
}

func demo(ctx context.Context, w io.Writer) error {
	dir, err := os.MkdirTemp("", "vsagent-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	node := filepath.Join(dir, "node.xml")
	if err := os.WriteFile(node, []byte(demoNode), 0o600); err != nil {
		return err
	}
	cfg := config.Default()
	fmt.Fprintln(w, "vsagent demo: a simulated KVM host (libvirt's test driver) and the embedded default configuration")
	fmt.Fprintf(w, "configuration: %s\n", cfg.Summary())
	for _, p := range cfg.Policies {
		fmt.Fprintf(w, "policy %q: guests named %s go through %s\n", p.Name, strings.Join(p.Match.Domains, ", "), strings.Join(p.Chain, " → "))
	}
	fmt.Fprintln(w)

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	hv, err := hypervisor.Connect(ctx, "test://"+node, hypervisor.Options{Logger: quiet})
	if err != nil {
		return fmt.Errorf("open the simulated host: %w", err)
	}
	defer hv.Close()
	ag := agent.New(hv, cfg, agent.Options{Logger: quiet})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ag.Run(runCtx) }()
	defer func() { stop(); <-done }()

	n := &narrator{w: w, start: time.Now()}
	go narrateEvents(runCtx, ag, n)
	select {
	case <-ag.Ready():
	case <-ctx.Done():
		return ctx.Err()
	}
	n.say("agent ready: first resync complete")

	web, err := demoGuest(ctx, hv, "demo-web")
	if err != nil {
		return err
	}
	n.say("operator starts guest demo-web (policy %q by its name)", "protected")
	if err := waitGuest(ctx, ag, "demo-web", agent.GuestInspected); err != nil {
		return err
	}
	n.say("demo-web runs; its traffic is bound to ips → fw")

	db, err := demoGuest(ctx, hv, "demo-db")
	if err != nil {
		return err
	}
	n.say("operator starts guest demo-db: same chain, so it reuses the running appliances")
	if err := waitGuest(ctx, ag, "demo-db", agent.GuestInspected); err != nil {
		return err
	}
	if _, err := demoGuest(ctx, hv, "build-1"); err != nil {
		return err
	}
	n.say("operator starts guest build-1: no policy applies, it runs untouched")
	if err := waitGuest(ctx, ag, "build-1", agent.GuestUnmanaged); err != nil {
		return err
	}
	printState(w, ag)

	if err := removeGuest(ctx, hv, ag, web, "demo-web"); err != nil {
		return err
	}
	n.say("operator destroyed and undefined demo-web; demo-db still needs %d appliances, they stay", len(ag.Appliances()))
	if err := removeGuest(ctx, hv, ag, db, "demo-db"); err != nil {
		return err
	}
	n.say("operator destroyed and undefined demo-db")
	if err := waitFor(ctx, func() bool { return len(ag.Appliances()) == 0 }); err != nil {
		return fmt.Errorf("appliances were not collected: %w", err)
	}
	n.say("no guest needs an appliance any more: all deleted")
	printState(w, ag)
	return nil
}

func narrateEvents(ctx context.Context, ag *agent.Agent, n *narrator) {
	var seq uint64
	for {
		evs, changed := ag.Events(seq)
		for _, e := range evs {
			seq = e.Seq
			subject := e.Guest
			if subject == "" {
				subject = e.Appliance
			}
			n.say("  %-18s %s %s", e.Kind, subject, e.Message)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func printState(w io.Writer, ag *agent.Agent) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GUEST\tSTATE\tPOLICY\tCHAIN")
	for _, g := range ag.Guests() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.Name, g.State, dash(g.Policy), dash(strings.Join(g.Chain, " → ")))
	}
	fmt.Fprintln(tw, "\nAPPLIANCE\tDOMAIN\tSTATE\tMAC")
	for _, a := range ag.Appliances() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Appliance, a.Name, a.State, strings.Join(a.MACs, ","))
	}
	tw.Flush()
	fmt.Fprintln(w)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func demoGuest(ctx context.Context, hv *hypervisor.Conn, name string) (string, error) {
	d, err := hv.Define(ctx, &libvirtxml.Domain{
		Type:   "test",
		Name:   name,
		Memory: &libvirtxml.DomainMemory{Value: 262144, Unit: "KiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS:     &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"}},
	})
	if err != nil {
		return "", fmt.Errorf("define %s: %w", name, err)
	}
	if err := hv.Start(ctx, d.UUID); err != nil {
		return "", fmt.Errorf("start %s: %w", name, err)
	}
	return d.UUID, nil
}

// removeGuest destroys and undefines a guest and waits until the agent has
// forgotten it.
func removeGuest(ctx context.Context, hv *hypervisor.Conn, ag *agent.Agent, uuid, name string) error {
	if err := hv.Destroy(ctx, uuid); err != nil {
		return err
	}
	if err := hv.Undefine(ctx, uuid); err != nil {
		return err
	}
	return waitFor(ctx, func() bool {
		for _, g := range ag.Guests() {
			if g.Name == name {
				return false
			}
		}
		return ag.Settled()
	})
}

func waitGuest(ctx context.Context, ag *agent.Agent, name string, want agent.GuestState) error {
	err := waitFor(ctx, func() bool {
		for _, g := range ag.Guests() {
			if g.Name == name && g.State == want {
				return true
			}
		}
		return false
	})
	if err != nil {
		return fmt.Errorf("%s never became %s: %w", name, want, err)
	}
	return nil
}

func waitFor(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
