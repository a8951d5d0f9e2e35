package sourceroute

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
)

// state is one snapshot compiled for the data path. It is immutable once
// published, except for its decision cache. Objects that flows point at
// (endpoints, instances, ports) are carried over from the previous state
// when they did not change, so that an Update only disturbs the flows it
// has to.
type state struct {
	ports      map[string]*openPort
	ifaceByMAC map[uint64]*endpoint // by macKey
	instByMAC  map[MAC]*instanceObj
	appliances map[string]*applianceObj
	guests     map[string]*guestObj
	rx         []rxRole // by openPort.idx
	flood      map[uint16][]floodTarget
	floodAll   []floodTarget // every network's targets: broadcasts from the uplink
	uplink     *endpoint     // nil without an uplink port
	// Sizes of the dense id spaces, for workers' counter and queue arrays.
	guestSlots, instSlots, portSlots int

	decisions decisionCache
	direct    *decision // no chain in either direction
	blocked   *decision // the source guest is blocked
}

// macKey packs a MAC into an integer: maps keyed by integers take the
// runtime's fast path, keys of [6]byte its generic one, and these lookups
// are on every frame.
func macKey(b []byte) uint64 {
	_ = b[5]
	return uint64(binary.BigEndian.Uint32(b))<<16 | uint64(binary.BigEndian.Uint16(b[4:]))
}

// endpoint is where frames can be delivered: a guest interface or the
// uplink (remote, one for all remote hosts).
type endpoint struct {
	guest     *guestObj
	mac       MAC
	port      *openPort
	zone      uint16
	remote    bool
	dedicated bool
	vlan      uint16       // GuestInterface.VLAN
	liveGen   uint64       // the last update whose state has it; under Engine.updateMu
	flows     atomic.Int64 // flows that end here, until their entries are reclaimed
}

type guestObj struct {
	name   string
	rule   GuestRule // normalized copy
	ready  bool      // rule.Ready and every port open
	policy *policyObj
	ifaces []*endpoint
	slot   int
	rt     *guestRuntime
}

// guestRuntime is a guest's state that outlives rule changes.
type guestRuntime struct {
	blockedUntil atomic.Int64 // engine clock; a guest blocked until then starts no flow
	failClosed   limiter
}

type policyObj struct {
	name        string
	chain       []string
	classifiers []ClassifierRule
	symmetric   bool
	onTimeout   TimeoutAction
	blockFor    int64
}

type instanceObj struct {
	rule      ApplianceRule // identity fields; Healthy is the state's business
	name      string
	appliance string
	mac       MAC
	kind      ApplianceKind
	port, out *openPort // out: a wire appliance's out-port
	slot      int
	seed      uint64 // its weight in rendezvous hashing, stable across restarts
	// healthyGen is the last update whose state has it healthy; under
	// Engine.updateMu.
	healthyGen uint64
	flows      atomic.Int64 // flows pinned to it, until their entries are reclaimed
	probe      *probeState  // shared by every object of the same instance name
}

type applianceObj struct {
	name      string
	onFailure FailureAction
	healthy   []*instanceObj
	rt        *applianceRuntime
}

type applianceRuntime struct {
	bypass   limiter
	bypassed atomic.Uint64
	// availGen is the last update that changed whether the appliance has a
	// healthy instance, or its on_failure; under Engine.updateMu.
	availGen uint64
	depFlows atomic.Int64 // flows decided without it (skipped or missing)
}

type rxKind uint8

const (
	rxNone      rxKind = iota // a port being retired: frames are counted and dropped
	rxIntercept               // the shared intercept port
	rxUplink
	rxGuest // a dedicated guest port
	rxHeader
	rxWire  // either port of a wire appliance
	rxTrunk // a port of tagged guest interfaces only
)

type rxRole struct {
	kind  rxKind
	ep    *endpoint
	inst  *instanceObj
	vlans *vlanSet // the VLANs of the port's tagged guest interfaces, or nil
}

// floodTarget is one delivery port (and VLAN) of a network and the guest
// interfaces behind it.
type floodTarget struct {
	port *openPort
	vlan uint16
	eps  []*endpoint
}

type decisionCache struct {
	mu sync.Mutex
	m  map[string]*decision
}

// openPort is a Port the engine has opened, with its dense index.
type openPort struct {
	name string
	p    Port
	rx   bool // opened with Open, so it can be read
	mtu  int
	idx  int
	mu   sync.Mutex // serialises WriteBatch

	rxFrames, rxBytes, rxErrors atomic.Uint64 // written by the port's worker only
	txFrames, txBytes, txErrors atomic.Uint64 // written under mu
}

// registry is what the control path keeps across snapshots; guarded by
// Engine.updateMu.
type registry struct {
	gen        uint64 // counts updates
	ports      map[string]*openPort
	portIDs    idAlloc
	guestSlots map[string]*slotInfo
	guestIDs   idAlloc
	instSlots  map[string]*slotInfo
	instIDs    idAlloc
	zones      map[string]uint16
	zoneIDs    idAlloc
	guestRT    map[string]*guestRuntime
	appRT      map[string]*applianceRuntime
	probes     map[string]*probeState // by instance name
}

// slotInfo is a counter slot and what it held when its owner got it, so a
// reused slot does not report its previous owner's counts.
type slotInfo struct {
	id    int
	baseG guestValues
	baseI instValues
}

type idAlloc struct {
	next int
	free []int
}

func (a *idAlloc) get() int {
	if n := len(a.free); n > 0 {
		id := a.free[n-1]
		a.free = a.free[:n-1]
		return id
	}
	a.next++
	return a.next - 1
}

func (a *idAlloc) put(id int) { a.free = append(a.free, id) }

func (r *registry) init() {
	r.ports = map[string]*openPort{}
	r.guestSlots = map[string]*slotInfo{}
	r.instSlots = map[string]*slotInfo{}
	r.zones = map[string]uint16{}
	r.guestRT = map[string]*guestRuntime{}
	r.appRT = map[string]*applianceRuntime{}
	r.probes = map[string]*probeState{}
}

// acquire returns the open port called name, opening it if needed; a port
// opened for sending only is reopened when it must also be read.
func (r *registry) acquire(e *Engine, name string, rx bool) (*openPort, error) {
	if p := r.ports[name]; p != nil && (p.rx || !rx) {
		return p, nil
	}
	open := e.cfg.Open
	if !rx && e.cfg.OpenTx != nil {
		open = e.cfg.OpenTx
	}
	p, err := open(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrPortUnavailable, name, err)
	}
	op := &openPort{name: name, p: p, rx: rx || e.cfg.OpenTx == nil, mtu: e.linkMTU, idx: r.portIDs.get()}
	if m, ok := p.(interface{ MTU() int }); ok && m.MTU() > 0 {
		op.mtu = m.MTU()
	}
	return op, nil
}

func (r *registry) closeAll() error {
	var errs []error
	for name, p := range r.ports {
		if err := closePort(p.p); err != nil {
			errs = append(errs, fmt.Errorf("sourceroute: closing port %s: %w", name, err))
		}
		delete(r.ports, name)
	}
	return errors.Join(errs...)
}

func (e *Engine) emptyState() *state {
	return &state{
		ports:      map[string]*openPort{},
		ifaceByMAC: map[uint64]*endpoint{},
		instByMAC:  map[MAC]*instanceObj{},
		appliances: map[string]*applianceObj{},
		guests:     map[string]*guestObj{},
		flood:      map[uint16][]floodTarget{},
		decisions:  decisionCache{m: map[string]*decision{}},
		direct:     &decision{verdict: verdictDirect},
		blocked:    &decision{verdict: verdictDrop, reason: DropBlocked},
	}
}

// fillStatic adds the intercept and uplink ports' roles and the sizes of
// the id spaces; the ports themselves are already in st.ports.
func (e *Engine) fillStatic(st *state) {
	st.portSlots = e.reg.portIDs.next
	st.guestSlots = e.reg.guestIDs.next
	st.instSlots = e.reg.instIDs.next
	st.rx = make([]rxRole, st.portSlots)
	if p := st.ports[e.cfg.InterceptPort]; p != nil && e.cfg.InterceptPort != "" {
		st.rx[p.idx] = rxRole{kind: rxIntercept}
	}
	if p := st.ports[e.cfg.UplinkPort]; p != nil && e.cfg.UplinkPort != "" {
		st.uplink = e.uplink
		st.rx[p.idx] = rxRole{kind: rxUplink, ep: e.uplink}
	}
}

// changes is what an Update changed, for deciding which flows to delete.
// Objects of the new state carry the update's generation: an endpoint or
// instance without it is gone or unhealthy, an appliance with it in
// availGen changed availability. any says whether a flow may refer to
// one of those: only then is the flow table visited.
type changes struct {
	gen uint64
	any bool
}

// build compiles a validated snapshot on top of old. Ports that cannot be
// opened degrade what needs them and are reported in the returned error.
func (e *Engine) build(s *Snapshot, old *state) (*state, *changes, error) {
	r := &e.reg
	ns := e.emptyState()
	var portErrs []error
	port := func(name string, rx bool) *openPort {
		if p := ns.ports[name]; p != nil && (p.rx || !rx) {
			return p
		}
		p, err := r.acquire(e, name, rx)
		if err != nil {
			portErrs = append(portErrs, err)
			return nil
		}
		ns.ports[name] = p
		return p
	}
	for _, name := range []string{e.cfg.InterceptPort, e.cfg.UplinkPort} {
		if name != "" {
			port(name, true)
		}
	}

	// Zones: one per network name, stable while the network is in use.
	zoneOf := func(network string) uint16 {
		z, ok := r.zones[network]
		if !ok {
			z = uint16(r.zoneIDs.get())
			r.zones[network] = z
		}
		return z
	}

	r.gen++
	ch := &changes{gen: r.gen}
	for _, rule := range s.Guests {
		rule = rule.normalized()
		ports := make([]*openPort, len(rule.Interfaces))
		complete := true
		for i, gi := range rule.Interfaces {
			if ports[i] = port(gi.Port, gi.Dedicated || gi.VLAN != 0); ports[i] == nil {
				complete = false
			}
		}
		ready := rule.Ready && complete
		g := old.guests[rule.Name]
		if g == nil || g.ready != ready || !reflect.DeepEqual(g.rule, rule) || !samePorts(g, ports) {
			g = e.newGuest(rule, ready, ports, zoneOf)
		}
		ns.guests[g.name] = g
		for _, ep := range g.ifaces {
			ns.ifaceByMAC[macKey(ep.mac[:])] = ep
			ep.liveGen = ch.gen
		}
	}

	for _, rule := range s.Appliances {
		healthy, draining := rule.Healthy, rule.Draining
		rule.Healthy, rule.Draining = false, false
		if rule.Port == "" {
			e.appliance(ns, rule.Appliance, rule.OnFailure) // down: validated as unhealthy
			continue
		}
		in := port(rule.Port, true)
		var out *openPort
		if rule.Kind == WireAppliance {
			out = port(rule.OutPort, true)
		}
		a := e.appliance(ns, rule.Appliance, rule.OnFailure)
		if in == nil || (rule.Kind == WireAppliance && out == nil) {
			continue // unreachable: as good as unhealthy
		}
		inst := old.instByMAC[rule.MAC]
		if inst == nil || inst.rule != rule || inst.port != in || inst.out != out {
			inst = e.newInstance(rule, in, out)
		}
		ns.instByMAC[inst.mac] = inst
		if healthy {
			if !draining {
				a.healthy = append(a.healthy, inst)
			}
			inst.healthyGen = ch.gen
		}
	}
	// Appliances that chains name but no instance provides fail closed, and
	// their runtime lets flows that wait for them be found later.
	for _, g := range ns.guests {
		if p := g.policy; p != nil {
			for _, name := range p.chain {
				e.appliance(ns, name, FailBlock)
			}
			for _, c := range p.classifiers {
				for _, name := range c.Chain {
					e.appliance(ns, name, FailBlock)
				}
			}
		}
	}

	e.fillRoles(ns)
	for _, ep := range old.ifaceByMAC {
		if ep.liveGen != ch.gen && ep.flows.Load() > 0 {
			ch.any = true
		}
	}
	for _, inst := range old.instByMAC {
		if inst.healthyGen != ch.gen && inst.flows.Load() > 0 {
			ch.any = true
		}
	}
	names := map[string]bool{}
	for name := range old.appliances {
		names[name] = true
	}
	for name := range ns.appliances {
		names[name] = true
	}
	for name := range names {
		if availability(old.appliances[name]) != availability(ns.appliances[name]) {
			for _, a := range []*applianceObj{old.appliances[name], ns.appliances[name]} {
				if a != nil {
					a.rt.availGen = ch.gen
					ch.any = ch.any || a.rt.depFlows.Load() > 0
				}
			}
		}
	}
	return ns, ch, errors.Join(portErrs...)
}

// appliance returns ns's appliance called name, making it if needed.
func (e *Engine) appliance(ns *state, name string, onFailure FailureAction) *applianceObj {
	if a := ns.appliances[name]; a != nil {
		return a
	}
	a := &applianceObj{name: name, onFailure: onFailure, rt: e.reg.appRT[name]}
	if a.rt == nil {
		a.rt = &applianceRuntime{}
		e.reg.appRT[name] = a.rt
	}
	ns.appliances[name] = a
	return a
}

// availability is what flows that could not use an appliance depend on.
func availability(a *applianceObj) string {
	switch {
	case a == nil:
		return "unknown" // fails closed like "unavailable, block"
	case len(a.healthy) > 0:
		return "available"
	}
	return "unavailable, " + a.onFailure.String()
}

func samePorts(g *guestObj, ports []*openPort) bool {
	for i, ep := range g.ifaces {
		if ep.port != ports[i] {
			return false
		}
	}
	return true
}

func (e *Engine) newGuest(rule GuestRule, ready bool, ports []*openPort, zoneOf func(string) uint16) *guestObj {
	r := &e.reg
	g := &guestObj{name: rule.Name, rule: rule, ready: ready, rt: r.guestRT[rule.Name]}
	if g.rt == nil {
		g.rt = &guestRuntime{}
		r.guestRT[rule.Name] = g.rt
	}
	si := r.guestSlots[rule.Name]
	if si == nil {
		si = &slotInfo{id: r.guestIDs.get()}
		si.baseG = e.sumGuest(si.id)
		r.guestSlots[rule.Name] = si
	}
	g.slot = si.id
	if p := rule.Policy; p != nil {
		g.policy = &policyObj{name: p.Name, chain: p.Chain, classifiers: p.Classifiers,
			symmetric: p.Symmetric, onTimeout: p.OnTimeout, blockFor: int64(p.BlockFor)}
	}
	for i, gi := range rule.Interfaces {
		g.ifaces = append(g.ifaces, &endpoint{guest: g, mac: gi.MAC, port: ports[i], zone: zoneOf(gi.Network), dedicated: gi.Dedicated, vlan: gi.VLAN})
	}
	return g
}

func (e *Engine) newInstance(rule ApplianceRule, in, out *openPort) *instanceObj {
	r := &e.reg
	si := r.instSlots[rule.Instance]
	if si == nil {
		si = &slotInfo{id: r.instIDs.get()}
		si.baseI = e.sumInstance(si.id)
		r.instSlots[rule.Instance] = si
	}
	ps := r.probes[rule.Instance]
	if ps == nil {
		ps = &probeState{}
		r.probes[rule.Instance] = ps
	}
	// An outstanding probe went to the old ports or address, and what is
	// behind the new ones has to answer once before it can fall silent.
	ps.pending.Store(0)
	ps.alive.Store(false)
	h := fnv.New64a()
	h.Write([]byte(rule.Appliance + "/" + rule.Instance))
	return &instanceObj{rule: rule, name: rule.Instance, appliance: rule.Appliance, mac: rule.MAC,
		kind: rule.Kind, port: in, out: out, slot: si.id, seed: h.Sum64(), probe: ps}
}

// fillRoles derives the receive roles and flood lists of ns.
func (e *Engine) fillRoles(ns *state) {
	e.fillStatic(ns)
	byZone := map[uint16][]floodTarget{}
	for _, g := range ns.guests {
		for _, ep := range g.ifaces {
			if ep.port == nil {
				continue
			}
			if ep.dedicated {
				ns.rx[ep.port.idx] = rxRole{kind: rxGuest, ep: ep}
			}
			targets := byZone[ep.zone]
			found := false
			for i := range targets {
				if targets[i].port == ep.port && targets[i].vlan == ep.vlan {
					targets[i].eps = append(targets[i].eps, ep)
					found = true
				}
			}
			if !found {
				targets = append(targets, floodTarget{port: ep.port, vlan: ep.vlan, eps: []*endpoint{ep}})
			}
			byZone[ep.zone] = targets
		}
	}
	fillVLANRoles(ns)
	for z, targets := range byZone {
		ns.flood[z] = targets
		ns.floodAll = append(ns.floodAll, targets...)
	}
	for _, inst := range ns.instByMAC {
		switch inst.kind {
		case WireAppliance:
			ns.rx[inst.port.idx] = rxRole{kind: rxWire, inst: inst}
			ns.rx[inst.out.idx] = rxRole{kind: rxWire, inst: inst}
		default:
			ns.rx[inst.port.idx] = rxRole{kind: rxHeader, inst: inst}
		}
	}
}

// Update replaces the snapshot. It validates the whole snapshot first and
// changes nothing if it is invalid (ErrBadSnapshot). Otherwise it opens the
// ports the snapshot needs, publishes it, waits until every worker has
// moved on to it, deletes every flow whose guest, policy, chain or pinned
// instance changed, and waits once more: when Update returns, no frame is
// forwarded under the old rules any more. Then it stops reading and closes
// the ports that are no longer needed.
//
// Flows that the change does not touch keep their instances and counters.
// If ctx ends while Update waits for the workers, the snapshot is in force
// but frames already being forwarded under the old rules may still go out;
// the error says so.
func (e *Engine) Update(ctx context.Context, s Snapshot) error {
	e.updateMu.Lock()
	defer e.updateMu.Unlock()
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return ErrEngineClosed
	}
	if err := e.validate(&s); err != nil {
		return err
	}
	old := e.state.Load()
	ns, ch, portErr := e.build(&s, old)
	e.state.Store(ns)
	e.syncWorkers(ns)
	waitErr := e.synchronize(ctx)
	deleted := 0
	if ch.any {
		// Even if the wait was cut short the stale flows must go.
		_, deleted = e.table.Visit(e.mono(), func(f *Flow) VisitAction {
			if e.stale(e.slab.at(f.Value.Handle), ch) {
				return VisitDelete
			}
			return VisitKeep
		})
		if waitErr == nil {
			waitErr = e.synchronize(ctx)
		}
	}
	e.revalidateFast(ns)
	e.retire(ns)
	e.log.Info("distribution manager rules updated", "guests", len(ns.guests), "instances", len(ns.instByMAC),
		"ports", len(ns.ports), "flows_deleted", deleted, "flows", e.table.Len())
	if waitErr != nil {
		waitErr = fmt.Errorf("sourceroute: update applied, but frames in flight under the old rules may still be forwarded: %w", waitErr)
	}
	return errors.Join(waitErr, portErr)
}

// stale reports whether a flow must be re-decided under the new state.
func (e *Engine) stale(fe *flowEntry, ch *changes) bool {
	for _, ep := range fe.ends {
		if !ep.remote && ep.liveGen != ch.gen {
			return true
		}
	}
	d := fe.dec
	for _, inst := range d.insts {
		if inst.healthyGen != ch.gen {
			return true
		}
	}
	for _, rt := range d.depRT {
		if rt.availGen == ch.gen {
			return true
		}
	}
	return false
}

// hold counts a flow (n = 1) or its reclaimed entry (n = -1) on what it
// refers to, so that Update can tell whether any flow is affected.
func (fe *flowEntry) hold(n int64) {
	for _, ep := range fe.ends {
		if !ep.remote {
			ep.flows.Add(n)
		}
	}
	for _, inst := range fe.dec.insts {
		inst.flows.Add(n)
	}
	for _, rt := range fe.dec.depRT {
		rt.depFlows.Add(n)
	}
}

// retire stops the workers of ports that ns no longer reads, closes the
// ports it no longer uses and frees the ids of what is gone.
func (e *Engine) retire(ns *state) {
	r := &e.reg
	e.mu.Lock()
	var stopped []*worker
	for p, w := range e.workers {
		if ns.ports[p.name] != p || ns.rx[p.idx].kind == rxNone {
			w.stop()
			stopped = append(stopped, w)
			delete(e.workers, p)
		}
	}
	e.mu.Unlock()
	for _, w := range stopped {
		<-w.done
		e.removeReader(w.slot)
		e.mu.Lock()
		e.retired.fold(w.counters())
		e.mu.Unlock()
	}
	for name, p := range r.ports {
		if ns.ports[name] != p {
			if err := closePort(p.p); err != nil {
				e.log.Warn("closing a port", "port", name, "err", err)
			}
			e.fastPortClosed(p)
			r.portIDs.put(p.idx)
		}
	}
	r.ports = map[string]*openPort{}
	for name, p := range ns.ports {
		r.ports[name] = p
	}
	for name, si := range r.guestSlots {
		if ns.guests[name] == nil {
			r.guestIDs.put(si.id)
			delete(r.guestSlots, name)
			delete(r.guestRT, name)
		}
	}
	live := map[string]bool{}
	for _, inst := range ns.instByMAC {
		live[inst.name] = true
	}
	for name, si := range r.instSlots {
		if !live[name] {
			r.instIDs.put(si.id)
			delete(r.instSlots, name)
			delete(r.probes, name)
		}
	}
	for name := range r.appRT {
		if ns.appliances[name] == nil {
			delete(r.appRT, name)
		}
	}
	zones := map[uint16]bool{}
	for _, g := range ns.guests {
		for _, ep := range g.ifaces {
			zones[ep.zone] = true
		}
	}
	for network, z := range r.zones {
		if !zones[z] {
			r.zoneIDs.put(int(z))
			delete(r.zones, network)
		}
	}
}

// The epoch scheme that lets Update and slab reclamation know when no
// worker still uses what they replaced. A worker announces the global epoch
// when it starts a batch and 0 when it is done; synchronize bumps the
// epoch and waits until every worker is idle or has started a batch since.

type readerSlot struct {
	epoch atomic.Uint64
	_     [56]byte // one cache line per worker
}

func (e *Engine) removeReader(s *readerSlot) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var list []*readerSlot
	for _, r := range *e.readers.Load() {
		if r != s {
			list = append(list, r)
		}
	}
	e.readers.Store(&list)
}

// synchronize returns once every batch that started before the call has
// ended. Idle workers (blocked in ReadBatch) do not delay it.
func (e *Engine) synchronize(ctx context.Context) error {
	target := e.epoch.Add(1)
	for _, r := range *e.readers.Load() {
		for spins := 0; ; spins++ {
			if v := r.epoch.Load(); v == 0 || v >= target {
				break
			}
			if spins < 100 {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			time.Sleep(20 * time.Microsecond)
		}
	}
	return nil
}
