package sourceroute

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Snapshot is the whole desired state of the DM. The agent builds it from
// its configuration and what it knows of guests and appliance instances,
// and replaces it atomically with Engine.Update.
type Snapshot struct {
	Guests     []GuestRule
	Appliances []ApplianceRule // one per appliance instance
}

// GuestRule is one guest on this host.
type GuestRule struct {
	Name       string
	Interfaces []GuestInterface
	// Policy is nil for an unmanaged guest: its frames are forwarded
	// without a chain (unless the other end's policy asks for one).
	Policy *PolicyRule
	// Ready false means the guest's chain is not ready: every frame from
	// or to it is dropped and counted (chain_not_ready). Fail closed.
	Ready bool
}

// GuestInterface is one network interface of a guest.
type GuestInterface struct {
	MAC MAC
	// Port is where the DM delivers frames for this interface: its tap or
	// its VF representor.
	Port string
	// Network names the interface's L2 domain (its bridge or libvirt
	// network). Interfaces of one network share a flow zone, so that
	// networks with overlapping addresses never share flows, and
	// broadcasts reach only their own network (and the uplink).
	Network string
	// Dedicated means the guest's frames arrive on Port itself (a VF
	// representor, a directly connected veth) rather than on the shared
	// intercept port. The DM then reads Port and accepts there only frames
	// whose source is this interface's MAC.
	Dedicated bool
	// VLAN is the 802.1Q tag the interface's frames carry on Port, in both
	// directions (a port VLAN of the NIC's switch); 0 means untagged. The
	// DM then reads Port, pops the tag of what arrives and pushes it on
	// what it delivers (see dm_vlan.go).
	VLAN uint16
}

// PolicyRule is what a managed guest's traffic goes through.
type PolicyRule struct {
	Name string
	// Chain is the appliances, in order, for traffic no classifier
	// matches; empty means no inspection.
	Chain []string
	// Classifiers are tried in order on a flow's first packet; the first
	// that matches picks the chain.
	Classifiers []ClassifierRule
	// Symmetric makes replies take the chain in reverse; otherwise they
	// are delivered without inspection.
	Symmetric bool
	// OnTimeout is what a return timeout or a drop notice does besides
	// raising an Event: with OnTimeoutBlock the frame's source guest may
	// start no new flow for BlockFor.
	OnTimeout TimeoutAction
	BlockFor  time.Duration
}

// ClassifierRule picks a chain for part of a guest's traffic. Every
// criterion it sets must match; empty Ports or Prefixes match everything.
type ClassifierRule struct {
	// Direction is who sent the flow's first packet: the guest (Egress)
	// or the other end (Ingress).
	Direction TrafficDirection
	// Protocol is the IP protocol number, or AnyProtocol. Frames that are
	// not IP match only AnyProtocol without Ports or Prefixes.
	Protocol int
	// Ports are inclusive ranges of the first packet's destination port
	// (the service port). Only for protocols with ports.
	Ports [][2]uint16
	// Prefixes hold the other end's address (never the guest's).
	Prefixes []netip.Prefix
	// Chain is the appliances for this traffic; empty means none.
	Chain []string
}

// AnyProtocol in ClassifierRule.Protocol matches every protocol.
const AnyProtocol = -1

// maxZones is how many networks flow keys can tell apart.
const maxZones = 1 << 16

// ApplianceRule is one instance of an appliance.
type ApplianceRule struct {
	Appliance string // the appliance (chains name it)
	Instance  string // the instance's domain name, unique
	// MAC is the instance's hop address in routes. For a wire appliance it
	// only identifies the hop (wire appliances never see the header).
	MAC  MAC
	Kind ApplianceKind
	// Port is a header appliance's link (both directions) or a wire
	// appliance's in-port. An instance that is down (Healthy false) may
	// have no ports: it then only tells the engine that the appliance
	// exists and what its OnFailure is.
	Port string
	// OutPort is a wire appliance's out-port. Frames of a flow's forward
	// direction enter Port and come back on OutPort; replies go the other
	// way, the way a bump in the wire sees them.
	OutPort string
	// Healthy false takes the instance out of new flows' choices and moves
	// the flows pinned to it to a healthy twin.
	Healthy bool
	// Draining (with Healthy) gives the instance no new flows but keeps
	// the flows pinned to it there, so that scaling in moves no live flow.
	Draining bool
	// OnFailure applies when the appliance has no healthy instance. All
	// instances of an appliance must agree.
	OnFailure FailureAction
}

// TrafficDirection says who sent a flow's first packet, seen from a guest.
type TrafficDirection uint8

const (
	BothDirections TrafficDirection = iota
	Egress                          // the guest initiated the flow
	Ingress                         // the other end initiated it
)

var trafficDirectionNames = [...]string{BothDirections: "both", Egress: "egress", Ingress: "ingress"}

func (d TrafficDirection) String() string { return label(trafficDirectionNames[:], d) }

// TimeoutAction is a policy's on_timeout.
type TimeoutAction uint8

const (
	OnTimeoutAlert TimeoutAction = iota // raise an Event only
	OnTimeoutBlock                      // and block the source guest's new flows
)

var timeoutActionNames = [...]string{OnTimeoutAlert: "alert", OnTimeoutBlock: "block"}

func (a TimeoutAction) String() string { return label(timeoutActionNames[:], a) }

// FailureAction is an appliance's on_failure. The zero value fails closed.
type FailureAction uint8

const (
	FailBlock  FailureAction = iota // drop the traffic (chain_not_ready)
	FailBypass                      // skip the step, with an Event
)

var failureActionNames = [...]string{FailBlock: "block", FailBypass: "bypass"}

func (a FailureAction) String() string { return label(failureActionNames[:], a) }

// ApplianceKind says whether an appliance speaks the MSR header.
type ApplianceKind uint8

const (
	HeaderAppliance ApplianceKind = iota // reads and advances the header itself
	WireAppliance                        // a bump in the wire: the DM strips and restores the header
)

var applianceKindNames = [...]string{HeaderAppliance: "header", WireAppliance: "wire"}

func (k ApplianceKind) String() string { return label(applianceKindNames[:], k) }

// problems collects every defect of a snapshot, so one Update reports all.
type problems []string

func (p *problems) addf(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrBadSnapshot, strings.Join(p, "; "))
}

// validate checks a snapshot without side effects. Port roles must not
// clash: a port is an appliance's, the uplink, a dedicated guest port, or
// a delivery port shared by guests (which may be the intercept port).
func (e *Engine) validate(s *Snapshot) error {
	var p problems
	macOwner := map[MAC]string{e.self: "the DM itself"}
	claimMAC := func(m MAC, who string) {
		switch {
		case !m.isUnicast():
			p.addf("%s: MAC %s is not a unicast address", who, m)
		case macOwner[m] != "":
			p.addf("%s: MAC %s is already %s's", who, m, macOwner[m])
		default:
			macOwner[m] = who
		}
	}
	const shared = "guest delivery"
	portRole := map[string]string{}
	if e.cfg.InterceptPort != "" {
		portRole[e.cfg.InterceptPort] = "the intercept port"
	}
	if e.cfg.UplinkPort != "" {
		portRole[e.cfg.UplinkPort] = "the uplink"
	}
	claimPort := func(name, role, who string) {
		switch prev := portRole[name]; {
		case name == "":
			p.addf("%s: empty port name", who)
		case prev == "":
			portRole[name] = role
		case role == shared && (prev == shared || prev == "the intercept port"):
		default:
			p.addf("%s: port %q is already used as %s", who, name, prev)
		}
	}

	guests, networks := map[string]bool{}, map[string]bool{}
	for i, g := range s.Guests {
		who := fmt.Sprintf("guest[%d] %q", i, g.Name)
		switch {
		case g.Name == "":
			p.addf("guest[%d]: empty name", i)
		case guests[g.Name]:
			p.addf("%s: duplicate name", who)
		}
		guests[g.Name] = true
		for j, gi := range g.Interfaces {
			networks[gi.Network] = true
			iwho := fmt.Sprintf("%s interface %d", who, j)
			claimMAC(gi.MAC, iwho)
			validateVLAN(&p, iwho, gi)
			if gi.Dedicated {
				claimPort(gi.Port, "a dedicated port of "+iwho, iwho)
			} else {
				claimPort(gi.Port, shared, iwho)
			}
		}
		if g.Policy != nil {
			e.validatePolicy(&p, who, g.Policy)
		}
	}

	if len(networks) > maxZones {
		p.addf("%d networks, at most %d", len(networks), maxZones)
	}

	instances := map[string]bool{}
	type applianceTraits struct {
		kind ApplianceKind
		fail FailureAction
	}
	traits := map[string]applianceTraits{}
	for i, a := range s.Appliances {
		who := fmt.Sprintf("appliance[%d] %q instance %q", i, a.Appliance, a.Instance)
		if a.Appliance == "" || a.Instance == "" {
			p.addf("%s: appliance and instance names are required", who)
		}
		if instances[a.Instance] {
			p.addf("%s: duplicate instance", who)
		}
		instances[a.Instance] = true
		claimMAC(a.MAC, who)
		if a.Kind > WireAppliance {
			p.addf("%s: unknown kind %d", who, a.Kind)
		}
		if a.OnFailure > FailBypass {
			p.addf("%s: unknown on_failure %d", who, a.OnFailure)
		}
		switch {
		case a.Port == "" && a.OutPort == "" && !a.Healthy:
			// An instance that is down: no link, only its appliance's
			// existence and on_failure.
		case a.Kind == WireAppliance:
			claimPort(a.Port, "a port of "+who, who)
			claimPort(a.OutPort, "a port of "+who, who)
		case a.OutPort != "":
			p.addf("%s: a header appliance has no out-port", who)
		default:
			claimPort(a.Port, "a port of "+who, who)
		}
		t := applianceTraits{a.Kind, a.OnFailure}
		if prev, ok := traits[a.Appliance]; ok && prev != t {
			p.addf("%s: kind %s and on_failure %s differ from another instance's (%s, %s)", who, a.Kind, a.OnFailure, prev.kind, prev.fail)
		}
		traits[a.Appliance] = t
	}
	return p.err()
}

func (e *Engine) validatePolicy(p *problems, who string, pol *PolicyRule) {
	who += fmt.Sprintf(" policy %q", pol.Name)
	checkChain := func(chain []string, where string) {
		if len(chain) > e.codec.maxHops()-1 {
			p.addf("%s%s: %d appliances, at most %d fit in a route", who, where, len(chain), e.codec.maxHops()-1)
		}
		for i, name := range chain {
			if name == "" {
				p.addf("%s%s: empty appliance name", who, where)
			}
			if slices.Contains(chain[:i], name) {
				p.addf("%s%s: appliance %q appears twice", who, where, name)
			}
		}
	}
	checkChain(pol.Chain, "")
	for i, c := range pol.Classifiers {
		where := fmt.Sprintf(" classifier %d", i)
		checkChain(c.Chain, where)
		if c.Direction > Ingress {
			p.addf("%s%s: unknown direction %d", who, where, c.Direction)
		}
		if c.Protocol < AnyProtocol || c.Protocol > 255 {
			p.addf("%s%s: protocol %d outside -1..255", who, where, c.Protocol)
		}
		if len(c.Ports) > 0 && (c.Protocol < 0 || !protoHasPorts(uint8(c.Protocol))) {
			p.addf("%s%s: ports need a protocol with ports, not %d", who, where, c.Protocol)
		}
		for _, r := range c.Ports {
			if r[0] > r[1] {
				p.addf("%s%s: port range %d-%d is empty", who, where, r[0], r[1])
			}
		}
		for _, pf := range c.Prefixes {
			if !pf.IsValid() {
				p.addf("%s%s: invalid prefix", who, where)
			}
		}
	}
	switch pol.OnTimeout {
	case OnTimeoutAlert:
	case OnTimeoutBlock:
		if pol.BlockFor <= 0 {
			p.addf("%s: on_timeout block needs a positive block_for", who)
		}
	default:
		p.addf("%s: unknown on_timeout %d", who, pol.OnTimeout)
	}
}

// normalized returns a deep copy of g in which empty slices are nil, so
// that two snapshots describing the same guest compare equal however the
// caller spelled "nothing".
func (g GuestRule) normalized() GuestRule {
	g.Interfaces = cloneOrNil(g.Interfaces)
	if g.Policy != nil {
		p := *g.Policy
		p.Chain = cloneOrNil(p.Chain)
		p.Classifiers = cloneOrNil(p.Classifiers)
		for i := range p.Classifiers {
			c := &p.Classifiers[i]
			c.Ports = cloneOrNil(c.Ports)
			c.Prefixes = cloneOrNil(c.Prefixes)
			c.Chain = cloneOrNil(c.Chain)
		}
		g.Policy = &p
	}
	return g
}

func cloneOrNil[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return slices.Clone(s)
}
