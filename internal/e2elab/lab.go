package e2elab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/internal/vmimage"
	"github.com/vsagent/vsagent/sourceroute"
)

// The lab's fixed topology inside its network namespace.
const (
	Bridge    = "br0"
	DMPort    = "vsa-dm0"
	bridgeMAC = "02:77:00:00:00:01"
	// Subnet holds the guests' addresses: guest n is 10.77.0.(10+n).
	subnetPrefix = "10.77.0."
)

// IPSRules and FWRules are the two appliances' rules, baked into their
// templates' command lines: ips denies telnet, fw drops the EICAR test
// string. Keeping the checks in different appliances shows which one acted.
const (
	IPSRules = `[filter]
default = "allow"

[[rule]]
name = "no-telnet"
action = "deny"
proto = "tcp"
dport = 23
`
	FWRules = `[filter]
default = "allow"

[[signature]]
name = "eicar"
pattern = 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR'
action = "drop"
`
)

// Options configure a lab.
type Options struct {
	// Dir receives everything the lab writes but libvirtd's own state
	// (templates, configuration, consoles); it must exist.
	Dir string
	// Template is the header appliance template (vsa-header.xml).
	Template string
	// Kernel and Initrd are the appliance image (vsagent image build).
	Kernel, Initrd string
	// DomainType, if set, replaces the template's domain type: "kvm" on
	// hosts where KVM boots guests (see DomainType), else "qemu".
	DomainType string
	// GuestPrefix names the guests the policy protects: PREFIX-*.
	GuestPrefix string
	// Logger receives the agent's and the DM's logs; nil discards them.
	Logger *slog.Logger
}

// Lab is a running end-to-end lab.
type Lab struct {
	Libvirt   *libvirtlab.Lab
	Conn      *hypervisor.Conn
	Agent     *agent.Agent
	DM        *agent.DistributionManager
	NetNSPath string
	Config    *config.Config

	opts   Options
	guest  libvirtlab.Image
	cancel context.CancelFunc
	done   chan error
	dmDone chan error
}

// Guest is a QEMU guest on the lab's bridge.
type Guest struct {
	Name, UUID, IP, MAC string
	// Console is the guest's serial console log.
	Console string
}

// Start brings the lab up: libvirtd, the bridge, the appliance templates
// and configuration, and the agent with its distribution manager, and
// returns once the agent's first resync is done.
func Start(ctx context.Context, opts Options) (l *Lab, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.GuestPrefix == "" {
		opts.GuestPrefix = "web"
	}
	guest, err := libvirtlab.GuestImage(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("e2elab: guest image: %w", err)
	}
	lv, err := libvirtlab.Start(ctx, "", libvirtlab.Options{})
	if err != nil {
		return nil, fmt.Errorf("e2elab: %w", err)
	}
	l = &Lab{Libvirt: lv, NetNSPath: filepath.Join("/var/run/netns", lv.NetNS), opts: opts, guest: guest}
	defer func() {
		if err != nil {
			_ = l.Stop(context.WithoutCancel(ctx))
		}
	}()
	for _, args := range [][]string{
		// A fixed address: a bridge otherwise takes its lowest port's MAC,
		// which changes as guests come and go.
		{"ip", "link", "add", Bridge, "address", bridgeMAC, "type", "bridge"},
		{"sysctl", "-qw", "net.ipv6.conf." + Bridge + ".disable_ipv6=1"},
		{"ip", "link", "set", Bridge, "up"},
	} {
		if _, err := lv.Exec(ctx, args...); err != nil {
			return l, fmt.Errorf("e2elab: bridge: %w", err)
		}
	}
	if l.Config, err = writeConfig(opts, lv.URI()); err != nil {
		return l, err
	}
	if l.Conn, err = hypervisor.Connect(ctx, lv.URI(), hypervisor.Options{Logger: opts.Logger}); err != nil {
		return l, fmt.Errorf("e2elab: connect: %w", err)
	}
	return l, l.startAgent(ctx)
}

// writeConfig writes the two appliance templates and the agent's
// configuration into opts.Dir and loads it.
func writeConfig(opts Options, uri string) (*config.Config, error) {
	doc, err := os.ReadFile(opts.Template)
	if err != nil {
		return nil, fmt.Errorf("e2elab: template: %w", err)
	}
	for name, rules := range map[string]string{"ips": IPSRules, "fw": FWRules} {
		dom := &libvirtxml.Domain{}
		if err := dom.Unmarshal(string(doc)); err != nil {
			return nil, fmt.Errorf("e2elab: template %s: %w", opts.Template, err)
		}
		dom.OS.Kernel, dom.OS.Initrd = opts.Kernel, opts.Initrd
		if opts.DomainType != "" {
			dom.Type = opts.DomainType
		}
		// Counters every 2s instead of 10s: the lab's story is short.
		if dom.OS.Cmdline, err = vmimage.Cmdline(vmimage.CmdlineOptions{Rules: []byte(rules), StatsInterval: 2 * time.Second}); err != nil {
			return nil, fmt.Errorf("e2elab: %s rules: %w", name, err)
		}
		out, err := dom.Marshal()
		if err != nil {
			return nil, fmt.Errorf("e2elab: template %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(opts.Dir, name+".xml"), []byte(out), 0o644); err != nil {
			return nil, fmt.Errorf("e2elab: %w", err)
		}
	}
	// return_timeout is generous because the appliances are emulated (TCG)
	// on a shared machine: a frame may well spend a second in one.
	text := fmt.Sprintf(`[agent]
libvirt_uri = %q
state_dir = %q
socket = %q

[dataplane]
port = %q
return_timeout = "3s"

[intercept]
backend = "tc-redirect"

[[appliance]]
name = "ips"
template = "ips.xml"
memory = "128MiB"

[[appliance]]
name = "fw"
template = "fw.xml"
memory = "128MiB"

[[policy]]
name = "protected"
chain = ["ips", "fw"]
[policy.match]
domains = [%q]
`, uri, filepath.Join(opts.Dir, "state"), filepath.Join(opts.Dir, "vsagent.sock"), DMPort, opts.GuestPrefix+"-*")
	path := filepath.Join(opts.Dir, "vsagent.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("e2elab: %w", err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, fmt.Errorf("e2elab: configuration: %w", err)
	}
	return cfg, nil
}

// startAgent wires the agent as `vsagent run` does, but with the DM's link,
// the intercept backend and the packet ports in the lab's namespace.
func (l *Lab) startAgent(ctx context.Context) error {
	log := l.opts.Logger
	var ag *agent.Agent
	var err error
	l.DM, err = agent.NewHostDataplane(l.Config, l.Conn, l.Libvirt.HostUUID, l.NetNSPath, log,
		func(e sourceroute.Event) { ag.RecordDataplaneEvent(e) })
	if err != nil {
		return fmt.Errorf("e2elab: %w", err)
	}
	ag = agent.New(l.Conn, l.Config, agent.Options{Logger: log, Dataplane: l.DM})
	l.Agent = ag
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel, l.done, l.dmDone = cancel, make(chan error, 1), make(chan error, 1)
	go func() { l.dmDone <- l.DM.Run(runCtx) }()
	go func() { l.done <- ag.Run(runCtx) }()
	select {
	case <-ag.Ready():
		return nil
	case err := <-l.done:
		l.done <- err
		return fmt.Errorf("e2elab: agent stopped before it was ready: %w", err)
	case <-ctx.Done():
		return fmt.Errorf("e2elab: waiting for the agent: %w", ctx.Err())
	}
}

// GuestMAC is the MAC of guest n.
func GuestMAC(n int) string { return fmt.Sprintf("52:54:00:77:00:%02x", n) }

// GuestIP is the address of guest n on the bridge.
func GuestIP(n int) string { return fmt.Sprintf("%s%d", subnetPrefix, 10+n) }

// BootGuest defines and starts guest n (1..200) named name, with one NIC on
// the bridge, its console in the lab folder and script (if any) run once it
// is up.
func (l *Lab) BootGuest(ctx context.Context, name string, n int, script string) (*Guest, error) {
	g := &Guest{Name: name, IP: GuestIP(n), MAC: GuestMAC(n), Console: filepath.Join(l.opts.Dir, name+".console")}
	opts := libvirtlab.GuestOptions{
		ConsoleLog: g.Console,
		Interfaces: []libvirtlab.GuestInterface{{Type: "bridge", Source: Bridge, MAC: g.MAC, Address: g.IP + "/24"}},
	}
	if script != "" {
		opts.Cmdline = libvirtlab.GuestRun(script)
	}
	dom, err := libvirtlab.GuestDomain(name, l.guest, opts)
	if err != nil {
		return nil, fmt.Errorf("e2elab: %w", err)
	}
	d, err := l.Conn.Define(ctx, dom)
	if err != nil {
		return nil, fmt.Errorf("e2elab: define %s: %w", name, err)
	}
	g.UUID = d.UUID
	if err := l.Conn.Start(ctx, d.UUID); err != nil {
		return nil, fmt.Errorf("e2elab: start %s: %w", name, err)
	}
	return g, nil
}

// RemoveGuest destroys and undefines a guest.
func (l *Lab) RemoveGuest(ctx context.Context, g *Guest) error {
	if err := l.Conn.Destroy(ctx, g.UUID); err != nil {
		return fmt.Errorf("e2elab: destroy %s: %w", g.Name, err)
	}
	if err := l.Conn.Undefine(ctx, g.UUID); err != nil {
		return fmt.Errorf("e2elab: undefine %s: %w", g.Name, err)
	}
	return nil
}

// GuestState is what the agent says of the named guest ("" if unknown).
func (l *Lab) GuestState(name string) agent.GuestState {
	for _, g := range l.Agent.Guests() {
		if g.Name == name {
			return g.State
		}
	}
	return ""
}

// DomainNames lists every domain libvirtd has, sorted.
func (l *Lab) DomainNames(ctx context.Context) ([]string, error) {
	doms, err := l.Conn.ListDomains(ctx)
	if err != nil {
		return nil, fmt.Errorf("e2elab: list domains: %w", err)
	}
	var names []string
	for _, d := range doms {
		names = append(names, d.Name)
	}
	slices.Sort(names)
	return names, nil
}

// Links lists the network interfaces in the lab's namespace, sorted.
func (l *Lab) Links(ctx context.Context) ([]string, error) {
	out, err := l.Libvirt.Exec(ctx, "ls", "/sys/class/net")
	if err != nil {
		return nil, fmt.Errorf("e2elab: %w", err)
	}
	links := strings.Fields(string(out))
	slices.Sort(links)
	return links, nil
}

// Stop stops the agent and the DM and then the whole lab: libvirtd, every
// QEMU and the namespaces. Guests' interception is not undone first:
// libvirtd's namespace, and every link in it, goes away.
func (l *Lab) Stop(ctx context.Context) error {
	var errs []error
	if l.cancel != nil {
		l.cancel()
		if err := <-l.done; err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("e2elab: agent: %w", err))
		}
		if err := <-l.dmDone; err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("e2elab: distribution manager: %w", err))
		}
		l.cancel = nil
	}
	if l.Conn != nil {
		l.Conn.Close()
	}
	if err := l.Libvirt.Stop(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// WaitFor polls cond until it holds or ctx ends; what names the wait in
// the error, which wraps ctx's.
func WaitFor(ctx context.Context, what string, cond func() bool) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("e2elab: waiting for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// ConsoleLine waits until the guest's console has a line containing
// substr and returns that line.
func (g *Guest) ConsoleLine(ctx context.Context, substr string) (string, error) {
	var line string
	err := WaitFor(ctx, g.Name+" console line "+substr, func() bool {
		doc, _ := os.ReadFile(g.Console)
		for l := range strings.Lines(string(doc)) {
			if strings.Contains(l, substr) {
				line = strings.TrimSpace(l)
				return true
			}
		}
		return false
	})
	return line, err
}
