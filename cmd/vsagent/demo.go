package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/e2elab"
	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/internal/vmimage"
)

// demoNode is an empty host for libvirt's test driver: a private, simulated
// hypervisor that needs no daemon, so the demo runs anywhere libvirt is.
const demoNode = `<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads><active>4</active><mhz>2000</mhz><model>x86_64</model></cpu><memory>8388608</memory></node>`

// runDemo is `vsagent demo`: the real story on QEMU guests and appliance
// VMs (realDemo), or with --simulated the control plane alone on
// libvirt's test driver, for machines without QEMU or root.
func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vsagent demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	simulated := fs.Bool("simulated", false, "play only the control plane on libvirt's test driver (no QEMU, no root)")
	imageDir := fs.String("image-dir", "build/images", "the appliance image (make appliance-image)")
	template := fs.String("template", "testdata/templates/vsa-header.xml", "the header appliance template")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: vsagent demo [--simulated] [-image-dir DIR] [-template FILE]")
		return 2
	}
	// Ctrl-C ends the story early, but the deferred cleanups still run.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	if *simulated {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		err = demo(ctx, stdout)
	} else {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
		defer cancel()
		err = realDemo(ctx, stdout, *imageDir, *template)
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "vsagent demo: interrupted; everything it started has been removed")
		return 130
	}
	if err != nil {
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

// demo plays vsagent's control-plane job on a simulated host with the
// embedded default configuration and narrates it.
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

// narrateEvents prints the agent's events as they come. An event equal to
// one already printed (a TCP retransmission dropped again, say) is not
// repeated, so the story stays readable.
func narrateEvents(ctx context.Context, ag *agent.Agent, n *narrator) {
	var seq uint64
	seen := map[narratedEvent]bool{}
	for {
		evs, changed := ag.Events(seq)
		for _, e := range evs {
			seq = e.Seq
			key := narratedEvent{e.Kind, e.Guest, e.Appliance, e.Message}
			if seen[key] {
				continue
			}
			seen[key] = true
			subject := e.Guest
			switch {
			case subject == "":
				subject = e.Appliance
			case e.Appliance != "":
				subject += " at " + e.Appliance
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

// narratedEvent is what narrateEvents tells apart: an event without its
// sequence number and time.
type narratedEvent struct {
	kind                      agent.EventKind
	guest, appliance, message string
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

// demoStep is one line of the real demo's summary.
type demoStep struct {
	what   string
	took   time.Duration
	result string
}

// realDemo plays the story on a private libvirtd with QEMU guests and
// appliance VMs, narrating each step, and removes everything it made.
func realDemo(ctx context.Context, w io.Writer, imageDir, template string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo starts a private libvirtd and QEMU guests, which needs root; vsagent demo --simulated runs without")
	}
	if err := libvirtlab.Available(); err != nil {
		return fmt.Errorf("%w (make demo installs what is missing; vsagent demo --simulated runs without QEMU)", err)
	}
	if _, err := vmimage.CheckAppliance(imageDir); err != nil {
		return fmt.Errorf("appliance image in %s: %w (build it with make appliance-image)", imageDir, err)
	}
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	if _, err := os.Stat(template); err != nil {
		return fmt.Errorf("appliance template: %w (run the demo from the source tree, or pass -template)", err)
	}
	dir, err := os.MkdirTemp("", "vsagent-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	n := &narrator{w: w, start: time.Now()}
	var steps []demoStep
	last := n.start
	step := func(what, result string) {
		steps = append(steps, demoStep{what, time.Since(last), result})
		last = time.Now()
	}
	fmt.Fprintln(w, "vsagent demo: real QEMU guests and appliance VMs on a private libvirtd (Ctrl-C stops and cleans up)")
	fmt.Fprintln(w, "policy \"protected\": guests named demo-* go through ips → fw; ips denies telnet (TCP 23), fw drops the EICAR test string")
	fmt.Fprintln(w)
	kernel, initrd := filepath.Join(abs(imageDir), vmimage.KernelFile), filepath.Join(abs(imageDir), vmimage.InitrdFile)
	n.say("checking whether appliance VMs boot under KVM on this host (a short probe boot, cached beside the image)…")
	virt, err := e2elab.DomainType(ctx, kernel, initrd)
	if err != nil {
		return err
	}
	n.say("appliance VMs run as type=%q: %s", virt.DomainType, virt.Reason)
	n.say("starting a private libvirtd in its own network and mount namespaces, a bridge br0, and vsagent…")
	lab, err := e2elab.Start(ctx, e2elab.Options{
		Dir: dir, Template: abs(template), GuestPrefix: "demo",
		Kernel: kernel, Initrd: initrd, DomainType: virt.DomainType,
	})
	if err != nil {
		return err
	}
	evCtx, stopEvents := context.WithCancel(ctx)
	defer func() {
		stopEvents()
		n.say("cleaning up: vsagent, libvirtd, every VM and the lab's namespace")
		if stopErr := lab.Stop(context.WithoutCancel(ctx)); stopErr != nil && err == nil {
			err = stopErr
		}
	}()
	n.say("lab %s up: vsagent runs against it; its DM reads %s, tc-redirect diverts the guests' taps", lab.Libvirt.Name, e2elab.DMPort)
	step("start the lab and vsagent", "ok")
	go narrateEvents(evCtx, lab.Agent, n)

	db, err := lab.BootGuest(ctx, "demo-db", 2, "")
	if err != nil {
		return err
	}
	n.say("operator starts guest demo-db (%s): HTTP on :80, echo on :7", db.IP)
	web, err := lab.BootGuest(ctx, "demo-web", 1, e2elab.TrafficScript(db.IP, true))
	if err != nil {
		return err
	}
	n.say("operator starts guest demo-web (%s): once booted it talks to demo-db", web.IP)
	if err := e2elab.WaitFor(ctx, "demo guests released", func() bool {
		return lab.GuestState("demo-web") == agent.GuestInspected && lab.GuestState("demo-db") == agent.GuestInspected
	}); err != nil {
		return err
	}
	n.say("both guests resumed with their chain in place; appliances and guests are booting (TCG, ~10–30 s)")
	step("gate guests, define and start appliances, resume", fmt.Sprintf("%d appliances", len(lab.Agent.Appliances())))

	frames := func() string {
		c := lab.DM.Engine().Counters()
		return fmt.Sprintf("DM → ips %d frames, → fw %d frames, kernel fast path %d frames",
			c.Instances["vsa-ips-1"].Sent, c.Instances["vsa-fw-1"].Sent, lab.DM.Engine().FastPathStats().Frames)
	}
	failed := 0
	describe := map[string][2]string{
		e2elab.MarkHTTP:   {"demo-web → demo-db HTTP", "200 OK through ips → fw"},
		e2elab.MarkEcho:   {"demo-web → demo-db echo (port 7)", "answered through ips → fw and back"},
		e2elab.MarkClosed: {"demo-web → demo-db port 24 (closed, allowed)", "refused: the reset came back through fw → ips"},
		e2elab.MarkTelnet: {"demo-web → demo-db telnet (port 23)", "blocked by vsa-ips-1 (rule no-telnet): no answer"},
		e2elab.MarkAttack: {"demo-web → demo-db EICAR payload", "dropped by vsa-fw-1 (signature eicar): nothing echoed"},
		e2elab.MarkBulk: {fmt.Sprintf("demo-web → demo-db %d random bytes (port 7)", e2elab.BulkBytes),
			"all echoed through ips → fw; once established, the kernel fast path carried the connection"},
	}
	_, err = web.Outcome(ctx, func(mark, line string) {
		d := describe[mark]
		o := e2elab.Outcome{Lines: map[string]string{mark: line}}
		if o.Passed(mark) {
			n.say("%s: %s (%s)", d[0], d[1], frames())
			step(d[0], "as the policy says")
			return
		}
		failed++
		n.say("%s: UNEXPECTED, the guest says %q (%s)", d[0], line, frames())
		step(d[0], "UNEXPECTED")
	}, e2elab.AllMarks...)
	if err != nil {
		return err
	}

	app, err := lab.BootGuest(ctx, "demo-app", 3, e2elab.TrafficScript(db.IP, false))
	if err != nil {
		return err
	}
	n.say("operator starts guest demo-app: same policy")
	if err := e2elab.WaitFor(ctx, "demo-app released", func() bool { return lab.GuestState("demo-app") == agent.GuestInspected }); err != nil {
		return err
	}
	names, _ := lab.DomainNames(ctx)
	n.say("demo-app resumed; it reuses the running appliances (domains now: %s)", strings.Join(names, ", "))
	step("third guest reuses the appliances", fmt.Sprintf("%d appliances", len(lab.Agent.Appliances())))
	out, err := app.Outcome(ctx, nil, e2elab.MarkHTTP)
	if err != nil {
		return err
	}
	if out.Passed(e2elab.MarkHTTP) {
		n.say("demo-app → demo-db HTTP: 200 OK through the same ips → fw (%s)", frames())
		step("demo-app → demo-db HTTP", "as the policy says")
	} else {
		failed++
		n.say("demo-app → demo-db HTTP: UNEXPECTED, the guest says %q", out.Lines[e2elab.MarkHTTP])
		step("demo-app → demo-db HTTP", "UNEXPECTED")
	}
	printState(w, lab.Agent)

	for _, g := range []*e2elab.Guest{web, db, app} {
		if err := lab.RemoveGuest(ctx, g); err != nil {
			return err
		}
		n.say("operator destroys and undefines %s", g.Name)
	}
	if err := e2elab.WaitFor(ctx, "appliances deleted", func() bool {
		names, err := lab.DomainNames(ctx)
		return err == nil && len(names) == 0 && lab.Agent.Settled()
	}); err != nil {
		return err
	}
	n.say("no guest needs an appliance any more: vsa-ips-1 and vsa-fw-1 deleted")
	step("remove guests, delete appliances", "ok")
	stopEvents()

	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tTOOK\tRESULT")
	for _, s := range steps {
		fmt.Fprintf(tw, "%s\t%.1fs\t%s\n", s.what, s.took.Seconds(), s.result)
	}
	tw.Flush()
	fmt.Fprintln(w)
	if failed > 0 {
		return fmt.Errorf("%d traffic checks did not go as the policy says", failed)
	}
	return nil
}
