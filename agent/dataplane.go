package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/sourceroute"
)

// DMConfig configures the distribution manager glue: which backend diverts
// guests' frames, and how the engine's ports are opened.
type DMConfig struct {
	Config  *config.Config
	HostID  string
	Backend intercept.Backend
	// Domains reads appliance domains' live XML to find their links.
	Domains interface {
		DomainXML(ctx context.Context, uuid string, inactive bool) (*libvirtxml.Domain, error)
	}
	// ApplianceLinks, if set, replaces reading the links (tap names) of an
	// appliance instance from its live XML; the first link is a header
	// appliance's port or a wire appliance's in-port, the second a wire
	// appliance's out-port.
	ApplianceLinks func(ctx context.Context, inst Instance) ([]string, error)
	// RedirectPort is where the backend diverts guests' frames to, and
	// InterceptPort where the engine reads them: the two ends of the DM's
	// intercept link (see EnsureDMPort).
	RedirectPort, InterceptPort string
	// Open and OpenTx open the engine's ports.
	Open, OpenTx sourceroute.PortOpener
	Logger       *slog.Logger
	// OnEvent receives the engine's events (drop notices, timeouts, …).
	OnEvent func(sourceroute.Event)
	// FastPath, if set and [dataplane] fast_path is on, forwards
	// established flows that take no chain in the kernel (see
	// NewFastPath). Run closes it after the engine, if it is an io.Closer.
	FastPath sourceroute.FastPath
}

// DistributionManager is the agent's Dataplane: it diverts guests'
// interfaces to the DM with an intercept backend and keeps the DM engine's
// snapshot in step with the guests and appliance instances the agent knows.
//
// Unmanaged guests are attached too, so that the DM can deliver to them;
// their interfaces are diverted only when they share a network with a
// managed guest, because otherwise their frames to a managed guest would
// reach it without passing its chain in reverse.
type DistributionManager struct {
	cfg    DMConfig
	engine *sourceroute.Engine
	log    *slog.Logger

	mu     sync.Mutex
	guests map[string]*dmGuest     // by UUID
	marks  map[string]instanceMark // by appliance instance UUID; see SetDraining
}

type dmGuest struct {
	name string
	// held guests wait for their chain: diverted, and every frame of
	// theirs dropped by the engine (fail closed).
	held        bool
	policy      *config.Policy
	ifaces      []intercept.Iface
	appliances  map[string][]Instance
	links       map[string][]string // instance name → links
	intercepted bool
	// checked: whether a diversion left by an earlier run of the agent
	// was looked for; one that no longer belongs is reverted.
	checked bool
}

// NewDistributionManager builds the engine from the configuration.
func NewDistributionManager(cfg DMConfig) (*DistributionManager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	dp := cfg.Config.Dataplane
	codec, err := sourceroute.NewCodec(dp.EtherType, dp.MaxHops)
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	if !dp.FastPath {
		cfg.FastPath = nil
	}
	d := &DistributionManager{cfg: cfg, log: cfg.Logger, guests: make(map[string]*dmGuest)}
	eng, err := sourceroute.NewEngine(sourceroute.Config{
		Codec:           codec,
		Self:            DMMAC(cfg.HostID),
		ReturnTimeout:   dp.ReturnTimeout,
		FlowIdleTimeout: dp.FlowIdleTimeout,
		MaxFlows:        dp.MaxFlows,
		InterceptPort:   cfg.InterceptPort,
		UplinkPort:      cfg.Config.Intercept.Uplink,
		Open:            cfg.Open,
		OpenTx:          cfg.OpenTx,
		Logger:          cfg.Logger,
		FastPath:        cfg.FastPath,
		FastPathAfter:   dp.FastPathAfter,
		Events:          d.onEngineEvent,
		ProbeInterval:   dp.ProbeInterval,
		ProbeTimeout:    dp.ProbeTimeout,
		ProbeMisses:     dp.ProbeMisses,
	})
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	d.engine = eng
	return d, nil
}

// DMMAC is the distribution manager's own hop address on a host:
// locally administered, derived from the host so it is stable across
// restarts, and outside the appliance MAC range.
func DMMAC(hostID string) sourceroute.MAC {
	sum := sha256.Sum256([]byte("vsagent-dm\x00" + hostID))
	return sourceroute.MAC{0x02, 0x5b, sum[0], sum[1], sum[2], sum[3]}
}

// Engine exposes the forwarding engine for counters and flows.
func (d *DistributionManager) Engine() *sourceroute.Engine { return d.engine }

// Run forwards frames until ctx ends. Guests' interception is left in
// place when it returns: fail closed until the next start.
func (d *DistributionManager) Run(ctx context.Context) error {
	err := d.engine.Run(ctx)
	err = errors.Join(err, d.engine.Close())
	if c, ok := d.cfg.FastPath.(io.Closer); ok {
		err = errors.Join(err, c.Close())
	}
	return err
}

// Attach wires one guest: the engine learns it (and the appliance instances
// of its chain) first, then its interfaces are diverted, so that a frame
// never reaches the DM before the DM knows what to do with it.
func (d *DistributionManager) Attach(ctx context.Context, g GuestPlan) error {
	ifaces := d.interfacesOf(ctx, g.Domain)
	if g.Policy != nil && len(ifaces) == 0 {
		return fmt.Errorf("guest %s has no network interface to divert", g.Name)
	}
	links := make(map[string][]string)
	for _, insts := range g.Appliances {
		for _, inst := range insts {
			if inst.Failed {
				continue // down: no links, and none needed
			}
			l, err := d.applianceLinks(ctx, inst)
			if err != nil {
				return err
			}
			links[inst.Name] = l
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.guests[g.UUID] = &dmGuest{
		name: g.Name, policy: g.Policy, ifaces: ifaces, appliances: g.Appliances, links: links,
		intercepted: d.guests[g.UUID] != nil && d.guests[g.UUID].intercepted,
		checked:     d.guests[g.UUID] != nil && d.guests[g.UUID].checked,
	}
	return d.syncLocked(ctx)
}

// Hold diverts a gated guest's interfaces with a rule that drops all its
// frames, so that even a guest that runs before its chain is ready (a start
// the gate has not caught yet) gets no uninspected connectivity.
func (d *DistributionManager) Hold(ctx context.Context, g GuestPlan) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	prev := d.guests[g.UUID]
	d.guests[g.UUID] = &dmGuest{
		name: g.Name, held: true, policy: g.Policy, ifaces: d.interfacesOf(ctx, g.Domain),
		intercepted: prev != nil && prev.intercepted,
		checked:     prev != nil && prev.checked,
	}
	return d.syncLocked(ctx)
}

// interfacesOf lists a guest's interfaces, each in the network the DM sees
// it in: the backend may know better than the domain XML (VFs of one
// physical function share its NIC's switch). An interface whose delivery
// cannot be told yet keeps the XML's network; the snapshot reports why.
func (d *DistributionManager) interfacesOf(ctx context.Context, dom *libvirtxml.Domain) []intercept.Iface {
	ifaces := intercept.InterfacesOf(dom)
	for i, ifc := range ifaces {
		if dl, err := intercept.DeliveryOf(ctx, d.cfg.Backend, ifc, d.cfg.RedirectPort); err == nil && dl.Network != "" {
			ifaces[i].Network = dl.Network
		}
	}
	return ifaces
}

// Detach reverts a guest's interception exactly and forgets it.
func (d *DistributionManager) Detach(ctx context.Context, uuid string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	g, ok := d.guests[uuid]
	if !ok {
		return nil
	}
	if g.intercepted {
		if err := d.revert(ctx, g); err != nil {
			return err
		}
	}
	delete(d.guests, uuid)
	return d.syncLocked(ctx)
}

// syncLocked diverts exactly the guests that must be, then hands the engine
// the whole desired state.
func (d *DistributionManager) syncLocked(ctx context.Context) error {
	managedNets := map[string]bool{}
	for _, g := range d.guests {
		if g.policy == nil && !g.held {
			continue
		}
		for _, ifc := range g.ifaces {
			if ifc.Network != "" {
				managedNets[ifc.Network] = true
			}
		}
	}
	snap, errs := d.snapshotLocked(ctx)
	// The engine first: it must know every guest before frames arrive.
	if err := d.engine.Update(ctx, snap); err != nil {
		return errors.Join(append(errs, fmt.Errorf("dataplane update: %w", err))...)
	}
	for _, g := range d.guests {
		want := g.policy != nil || g.held || slices.ContainsFunc(g.ifaces, func(i intercept.Iface) bool { return managedNets[i.Network] })
		if !g.checked {
			// After a restart the kernel may still hold diversions from the
			// previous run: adopt them, or revert those no longer wanted.
			applied, err := d.anyApplied(ctx, g)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			// A guest that must be diverted is applied again regardless
			// (idempotent), which also completes a half-done diversion.
			g.checked, g.intercepted = true, applied && !want
		}
		switch {
		case want && !g.intercepted:
			err := d.apply(ctx, g)
			if err != nil && !(g.held && errors.Is(err, hypervisor.ErrPaused)) {
				errs = append(errs, err)
				continue
			}
			// A held guest whose links could only be taken down (paused,
			// not yet rewirable) is as closed as a diverted one.
			g.intercepted = err == nil
		case !want && g.intercepted:
			if err := d.revert(ctx, g); err != nil {
				errs = append(errs, err)
				continue
			}
			g.intercepted = false
		}
	}
	return errors.Join(errs...)
}

func (d *DistributionManager) apply(ctx context.Context, g *dmGuest) error {
	for _, ifc := range g.ifaces {
		if err := d.cfg.Backend.Apply(ctx, ifc, d.cfg.RedirectPort); err != nil {
			return fmt.Errorf("divert %s of %s: %w", ifcName(ifc), g.name, err)
		}
	}
	d.log.Info("guest interfaces diverted to the distribution manager", "guest", g.name, "interfaces", len(g.ifaces), "backend", d.cfg.Backend.Name())
	return nil
}

// ifcName names an interface in errors: its host netdev, or its MAC where
// it has none (a direct interface between unplug and plug).
func ifcName(ifc intercept.Iface) string {
	if ifc.Target == "" && ifc.MAC != nil {
		return ifc.MAC.String()
	}
	return ifc.Target
}

func (d *DistributionManager) anyApplied(ctx context.Context, g *dmGuest) (bool, error) {
	for _, ifc := range g.ifaces {
		ok, err := d.cfg.Backend.Applied(ctx, ifc, d.cfg.RedirectPort)
		if err != nil {
			return false, fmt.Errorf("inspect diversion of %s of %s: %w", ifcName(ifc), g.name, err)
		}
		if ok {
			return true, nil
		}
	}
	return false, nil
}

func (d *DistributionManager) revert(ctx context.Context, g *dmGuest) error {
	for _, ifc := range g.ifaces {
		if err := d.cfg.Backend.Revert(ctx, ifc); err != nil {
			return fmt.Errorf("revert %s of %s: %w", ifcName(ifc), g.name, err)
		}
	}
	d.log.Info("guest interfaces restored", "guest", g.name)
	return nil
}

// snapshotLocked builds the engine's desired state. An interface whose
// delivery the backend cannot tell is left out, with the error: the engine
// then does not know its frames and drops them (fail closed).
func (d *DistributionManager) snapshotLocked(ctx context.Context) (sourceroute.Snapshot, []error) {
	var snap sourceroute.Snapshot
	var errs []error
	seen := map[string]bool{}
	cfg := d.cfg.Config
	for _, g := range d.guests {
		rule := sourceroute.GuestRule{Name: g.name, Ready: !g.held, Policy: policyRule(g.policy)}
		for _, ifc := range g.ifaces {
			if ifc.MAC == nil {
				continue
			}
			dl, err := intercept.DeliveryOf(ctx, d.cfg.Backend, ifc, d.cfg.RedirectPort)
			if err != nil {
				errs = append(errs, fmt.Errorf("delivery to %s of %s: %w", ifc, g.name, err))
				continue
			}
			if dl.Port == "" {
				continue // not running: no netdev yet
			}
			rule.Interfaces = append(rule.Interfaces, sourceroute.GuestInterface{
				MAC: macOf(ifc.MAC), Port: dl.Port, Dedicated: dl.Dedicated, VLAN: dl.VLAN, Network: ifc.Network,
			})
		}
		snap.Guests = append(snap.Guests, rule)
		for app, insts := range g.appliances { // a held guest has none yet
			ac, _ := cfg.Appliance(app)
			for _, inst := range insts {
				if seen[inst.Name] || len(inst.MACs) == 0 {
					continue
				}
				seen[inst.Name] = true
				hw, err := net.ParseMAC(inst.MACs[0])
				if err != nil {
					continue
				}
				ar := sourceroute.ApplianceRule{Appliance: app, Instance: inst.Name, MAC: macOf(hw),
					Healthy: !d.marks[inst.UUID].unhealthy && !inst.Failed, Draining: d.marks[inst.UUID].draining}
				if l := g.links[inst.Name]; len(l) > 0 && !inst.Failed {
					ar.Port = l[0]
					if len(l) > 1 {
						ar.OutPort = l[1]
					}
				}
				if ac != nil {
					if ac.Kind == appliance.KindWire {
						ar.Kind = sourceroute.WireAppliance
					}
					if ac.OnFailure == config.FailureBypass {
						ar.OnFailure = sourceroute.FailBypass
					}
				}
				snap.Appliances = append(snap.Appliances, ar)
			}
		}
	}
	slices.SortFunc(snap.Guests, func(a, b sourceroute.GuestRule) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(snap.Appliances, func(a, b sourceroute.ApplianceRule) int { return strings.Compare(a.Instance, b.Instance) })
	return snap, errs
}

func macOf(hw net.HardwareAddr) sourceroute.MAC {
	var m sourceroute.MAC
	copy(m[:], hw)
	return m
}

// applianceLinks finds the host-side links of an instance: by default the
// tap devices libvirt created for it, in interface order.
func (d *DistributionManager) applianceLinks(ctx context.Context, inst Instance) ([]string, error) {
	if d.cfg.ApplianceLinks != nil {
		return d.cfg.ApplianceLinks(ctx, inst)
	}
	x, err := d.cfg.Domains.DomainXML(ctx, inst.UUID, false)
	if err != nil {
		return nil, fmt.Errorf("read links of %s: %w", inst.Name, err)
	}
	var links []string
	for _, ifc := range intercept.InterfacesOf(x) {
		if ifc.Target != "" {
			links = append(links, ifc.Target)
		}
	}
	if len(links) == 0 {
		return nil, fmt.Errorf("appliance %s has no host-side link yet", inst.Name)
	}
	return links, nil
}

// policyRule converts a configured policy into the engine's form.
func policyRule(p *config.Policy) *sourceroute.PolicyRule {
	if p == nil {
		return nil
	}
	r := &sourceroute.PolicyRule{
		Name: p.Name, Chain: slices.Clone(p.Chain), Symmetric: p.Symmetric, BlockFor: p.BlockFor,
	}
	if p.OnTimeout == config.OnTimeoutBlock {
		r.OnTimeout = sourceroute.OnTimeoutBlock
	}
	for _, c := range p.Classifiers {
		cr := sourceroute.ClassifierRule{Protocol: c.ProtocolNumber, Prefixes: slices.Clone(c.Prefixes), Chain: slices.Clone(c.Chain)}
		switch c.Direction {
		case config.DirectionEgress:
			cr.Direction = sourceroute.Egress
		case config.DirectionIngress:
			cr.Direction = sourceroute.Ingress
		}
		for _, pr := range c.PortRanges {
			cr.Ports = append(cr.Ports, [2]uint16{pr.Lo, pr.Hi})
		}
		r.Classifiers = append(r.Classifiers, cr)
	}
	return r
}

// RecordDataplaneEvent files an event of the distribution manager (drop
// notice, return timeout, block, fail-closed drops, bypass) in the agent's
// event log, where vsactl and the metrics see it.
func (a *Agent) RecordDataplaneEvent(e sourceroute.Event) {
	msg := ""
	switch e.Kind {
	case sourceroute.EventDropNotice:
		msg = "dropped: " + e.Notice.String()
	case sourceroute.EventGuestBlocked:
		msg = "new flows blocked until " + e.Until.UTC().Format("15:04:05")
	case sourceroute.EventFailClosed:
		msg = "frames dropped: " + e.Reason.String()
	case sourceroute.EventApplianceSilent:
		msg = "health probes unanswered: taken out of the flows' choices"
	}
	if e.HasFlow {
		if msg != "" {
			msg += "; "
		}
		msg += "flow " + e.Flow.String()
	}
	if e.Suppressed > 0 {
		msg += fmt.Sprintf(" (+%d more)", e.Suppressed)
	}
	app := e.Instance
	if app == "" {
		app = e.Appliance
	}
	a.recordEvent(Event{Kind: dataplaneEventKinds[e.Kind], Guest: e.Guest, Appliance: app, Message: msg})
}

var dataplaneEventKinds = map[sourceroute.EventKind]EventKind{
	sourceroute.EventReturnTimeout:   EventReturnTimeout,
	sourceroute.EventDropNotice:      EventDropNotice,
	sourceroute.EventGuestBlocked:    EventGuestBlocked,
	sourceroute.EventFailClosed:      EventFailClosed,
	sourceroute.EventBypass:          EventBypass,
	sourceroute.EventApplianceSilent: EventApplianceSilent,
}
