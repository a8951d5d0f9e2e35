package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/config"
)

// ownedDomain is what the agent remembers of an appliance domain it owns.
type ownedDomain struct {
	Owner appliance.Owner
	UUID  string
	Name  string
	MACs  []string
	State hypervisor.State
}

// ownershipCache remembers which domains are vsagent's appliances (and which
// are known not to be), so that the common path does not re-read XML. It is
// only a cache: provisioning and garbage collection rescan libvirt.
type ownershipCache struct {
	mu      sync.Mutex
	owned   map[string]*ownedDomain
	foreign map[string]bool
}

func (c *ownershipCache) init() {
	c.owned = make(map[string]*ownedDomain)
	c.foreign = make(map[string]bool)
}

func (c *ownershipCache) lookup(uuid string) (ownedDomain, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.owned[uuid]
	if !ok {
		return ownedDomain{}, false
	}
	return *d, true
}

func (c *ownershipCache) remember(uuid string, o appliance.Owner, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.owned[uuid]; ok {
		d.Owner, d.Name = o, name
		return
	}
	c.owned[uuid] = &ownedDomain{Owner: o, UUID: uuid, Name: name}
	delete(c.foreign, uuid)
}

func (c *ownershipCache) setDetails(uuid string, macs []string, state hypervisor.State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.owned[uuid]; ok {
		if macs != nil {
			d.MACs = macs
		}
		d.State = state
	}
}

func (c *ownershipCache) rememberForeign(uuid string) {
	c.mu.Lock()
	c.foreign[uuid] = true
	c.mu.Unlock()
}

func (c *ownershipCache) isForeign(uuid string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.foreign[uuid]
}

func (c *ownershipCache) forget(uuid string) {
	c.mu.Lock()
	delete(c.owned, uuid)
	delete(c.foreign, uuid)
	c.mu.Unlock()
}

func (c *ownershipCache) all() []ownedDomain {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]ownedDomain, 0, len(c.owned))
	for _, d := range c.owned {
		out = append(out, *d)
	}
	slices.SortFunc(out, func(x, y ownedDomain) int {
		return cmp.Or(cmp.Compare(x.Owner.Appliance, y.Owner.Appliance), cmp.Compare(x.Owner.Index, y.Owner.Index))
	})
	return out
}

// templateCache holds parsed templates for the configuration in force.
type templateCache struct {
	mu    sync.Mutex
	byApp map[string]*libvirtxml.Domain
}

func (t *templateCache) reset() {
	t.mu.Lock()
	t.byApp = nil
	t.mu.Unlock()
}

func (t *templateCache) get(app *config.Appliance) (*libvirtxml.Domain, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d, ok := t.byApp[app.Name]; ok {
		return d, nil
	}
	// The configuration carries the template as it was validated at load
	// time, so an edit on disk only takes effect with a reload.
	var d *libvirtxml.Domain
	var err error
	if app.TemplateXML != "" {
		d, err = appliance.ParseTemplate([]byte(app.TemplateXML))
	} else {
		d, err = appliance.LoadTemplate(app.TemplatePath)
	}
	if err != nil {
		return nil, fmt.Errorf("template of appliance %q: %w", app.Name, err)
	}
	if t.byApp == nil {
		t.byApp = make(map[string]*libvirtxml.Domain)
	}
	t.byApp[app.Name] = d
	return d, nil
}

// scanAppliances brings the ownership cache up to date with every domain
// libvirt lists: a domain whose name has the instance form is read once to
// see whether it carries vsagent's ownership element. It returns all
// domains so callers can check names for collisions.
func (a *Agent) scanAppliances(ctx context.Context) ([]hypervisor.Domain, error) {
	doms, err := a.hv.ListDomains(ctx)
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	for _, d := range doms {
		if _, ok := a.owned.lookup(d.UUID); ok {
			a.owned.setDetails(d.UUID, nil, d.State)
			continue
		}
		if a.owned.isForeign(d.UUID) {
			continue
		}
		if _, _, ok := appliance.ParseInstanceName(d.Name); !ok {
			a.owned.rememberForeign(d.UUID)
			continue
		}
		x, err := a.hv.DomainXML(ctx, d.UUID, false)
		if errors.Is(err, hypervisor.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read XML of %s: %w", d.Name, err)
		}
		if o, ok := appliance.OwnerOf(x); ok {
			a.owned.remember(d.UUID, o, d.Name)
			a.owned.setDetails(d.UUID, macStrings(appliance.InstanceMACs(x)), d.State)
		} else {
			a.owned.rememberForeign(d.UUID)
		}
	}
	return doms, nil
}

// readyInstances finds a running instance of every appliance in needs,
// trusting the cache only after confirming each chosen instance's state
// with libvirt; it rescans once before declaring anything missing, so an
// agent that just started does not gate guests whose appliances run.
// With keepFailed, stopped and crashed instances are returned as Failed
// and do not make their appliance missing.
func (a *Agent) readyInstances(ctx context.Context, needs []string, keepFailed bool) (map[string][]Instance, []string, error) {
	ready, missing := a.runningFromCache(ctx, needs, keepFailed)
	if len(missing) == 0 {
		return ready, nil, nil
	}
	if _, err := a.scanAppliances(ctx); err != nil {
		return nil, nil, err
	}
	ready, missing = a.runningFromCache(ctx, needs, keepFailed)
	return ready, missing, nil
}

func (a *Agent) runningFromCache(ctx context.Context, needs []string, keepFailed bool) (map[string][]Instance, []string) {
	ready := make(map[string][]Instance, len(needs))
	var missing []string
	all := a.owned.all()
	for _, name := range needs {
		for _, d := range all {
			if d.Owner.Appliance != name {
				continue
			}
			cur, err := a.hv.Lookup(ctx, d.UUID)
			if err != nil {
				if errors.Is(err, hypervisor.ErrNotFound) {
					a.owned.forget(d.UUID)
				}
				continue
			}
			a.owned.setDetails(d.UUID, nil, cur.State)
			switch {
			case cur.State == hypervisor.StateRunning:
				ready[name] = append(ready[name], instanceOf(d))
			case keepFailed && (cur.State == hypervisor.StateShutoff || cur.State == hypervisor.StateCrashed):
				inst := instanceOf(d)
				inst.Failed = true
				ready[name] = append(ready[name], inst)
			}
		}
		if len(ready[name]) == 0 {
			missing = append(missing, name)
		}
	}
	return ready, missing
}

func instanceOf(d ownedDomain) Instance {
	return Instance{Appliance: d.Owner.Appliance, Index: d.Owner.Index, UUID: d.UUID, Name: d.Name, MACs: slices.Clone(d.MACs)}
}

// provision makes sure every appliance in needs has a running instance on
// this host, starting defined ones and defining new ones from templates.
func (a *Agent) provision(ctx context.Context, needs []string, log *slog.Logger) (map[string][]Instance, error) {
	a.provisionMu.Lock()
	defer a.provisionMu.Unlock()
	cfg := a.Config()
	doms, err := a.scanAppliances(ctx)
	if err != nil {
		return nil, err
	}
	names := make(map[string]bool, len(doms))
	for _, d := range doms {
		names[d.Name] = true
	}
	for _, name := range needs {
		app, ok := cfg.Appliance(name)
		if !ok {
			return nil, fmt.Errorf("%w: appliance %q is not in the configuration", ErrProvision, name)
		}
		if err := a.ensureRunning(ctx, app, names, log); err != nil {
			return nil, err
		}
	}
	ready, missing := a.runningFromCache(ctx, needs, false)
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: not running after start: %v", ErrProvision, missing)
	}
	return ready, nil
}

func (a *Agent) ensureRunning(ctx context.Context, app *config.Appliance, names map[string]bool, log *slog.Logger) error {
	var stopped *ownedDomain
	for _, d := range a.owned.all() {
		if d.Owner.Appliance != app.Name {
			continue
		}
		if d.State == hypervisor.StateRunning {
			return nil
		}
		if stopped == nil {
			stopped = &d
		}
	}
	if stopped != nil {
		if stopped.State == hypervisor.StatePaused {
			if err := a.hv.Resume(ctx, stopped.UUID); err != nil {
				return fmt.Errorf("%w: resume %s: %w", ErrProvision, stopped.Name, err)
			}
		} else if err := a.hv.Start(ctx, stopped.UUID); err != nil {
			return fmt.Errorf("%w: start %s: %w", ErrProvision, stopped.Name, err)
		}
		log.Info("appliance started", "appliance", app.Name, "domain", stopped.Name)
		a.recordEvent(Event{Kind: EventApplianceStarted, Appliance: stopped.Name})
		return nil
	}
	_, err := a.defineAndStart(ctx, app, 0, names, log)
	return err
}

// defineAndStart builds a new instance of app from its template with the
// given index (0: the lowest free one), defines and starts it, and returns
// its name.
func (a *Agent) defineAndStart(ctx context.Context, app *config.Appliance, index int, names map[string]bool, log *slog.Logger) (string, error) {
	tmpl, err := a.templates.get(app)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrProvision, err)
	}
	if index <= 0 {
		index = 1
		for names[appliance.InstanceName(app.Name, index)] {
			index++
		}
	}
	used, err := a.macsInUse(ctx)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrProvision, err)
	}
	spec := appliance.Spec{
		Appliance:    app.Name,
		Index:        index,
		Kind:         app.Kind,
		VCPUs:        uint(app.VCPUs),
		MaxVCPUs:     uint(app.MaxVCPUs),
		MemoryKiB:    app.MemoryKiB,
		MaxMemoryKiB: app.MaxMemoryKiB,
		HostID:       a.hostID,
	}
	inst, macs, err := appliance.NewInstance(tmpl, spec, used)
	if err != nil {
		return "", fmt.Errorf("%w: build instance of %q: %w", ErrProvision, app.Name, err)
	}
	def, err := a.hv.Define(ctx, inst)
	if err != nil {
		return "", fmt.Errorf("%w: define %s: %w", ErrProvision, inst.Name, err)
	}
	owner, _ := appliance.OwnerOf(inst)
	a.owned.remember(def.UUID, owner, def.Name)
	a.owned.setDetails(def.UUID, macStrings(macs), def.State)
	names[def.Name] = true
	log.Info("appliance defined from template", "appliance", app.Name, "domain", def.Name, "template", app.TemplatePath)
	a.recordEvent(Event{Kind: EventApplianceDefined, Appliance: def.Name})
	if err := a.hv.Start(ctx, def.UUID); err != nil {
		return "", fmt.Errorf("%w: start %s: %w", ErrProvision, def.Name, err)
	}
	a.owned.setDetails(def.UUID, nil, hypervisor.StateRunning)
	log.Info("appliance started", "appliance", app.Name, "domain", def.Name)
	a.recordEvent(Event{Kind: EventApplianceStarted, Appliance: def.Name})
	return def.Name, nil
}

// reconcileAppliance keeps the cache current and wakes whoever depends on
// the appliance: guests that need it (it may have stopped, or become ready)
// and garbage collection (it may be needed by no one).
func (a *Agent) reconcileAppliance(ctx context.Context, dom hypervisor.Domain) error {
	a.owned.setDetails(dom.UUID, nil, dom.State)
	od, _ := a.owned.lookup(dom.UUID)
	if dom.State != hypervisor.StateRunning {
		for _, g := range a.guestsNeeding(od.Owner.Appliance) {
			a.queue.add(g)
		}
	}
	a.queue.add(gcKey)
	return nil
}

// collectGarbage deletes appliance domains that vsagent owns and no active
// guest needs. It never runs while a resync pass is incomplete, and it never
// touches a domain without vsagent's ownership element.
func (a *Agent) collectGarbage(ctx context.Context) error {
	a.mu.Lock()
	if len(a.pending) > 0 {
		a.mu.Unlock()
		return nil
	}
	a.mu.Unlock()

	a.provisionMu.Lock()
	defer a.provisionMu.Unlock()
	if _, err := a.scanAppliances(ctx); err != nil {
		return err
	}
	needed := a.neededAppliances()
	var errs []error
	for _, d := range a.owned.all() {
		if needed[d.Owner.Appliance] {
			continue
		}
		if err := a.deleteAppliance(ctx, d); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	a.markSynced()
	return nil
}

func (a *Agent) deleteAppliance(ctx context.Context, d ownedDomain) error {
	removed, err := a.removeAppliance(ctx, d)
	if err != nil || !removed {
		return err
	}
	a.log.Info("appliance deleted: no guest needs it", "appliance", d.Owner.Appliance, "domain", d.Name)
	a.recordEvent(Event{Kind: EventApplianceDeleted, Appliance: d.Name})
	return nil
}

// removeAppliance destroys and undefines an appliance domain, and reports
// whether it did: a domain already gone, or one that turns out not to
// carry vsagent's ownership element, is left alone. Ownership is re-read
// from libvirt itself right before: the cache must never be the only
// reason a domain is destroyed.
func (a *Agent) removeAppliance(ctx context.Context, d ownedDomain) (bool, error) {
	x, err := a.hv.DomainXML(ctx, d.UUID, false)
	if errors.Is(err, hypervisor.ErrNotFound) {
		a.owned.forget(d.UUID)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read XML of %s before deleting: %w", d.Name, err)
	}
	if _, ok := appliance.OwnerOf(x); !ok {
		a.owned.rememberForeign(d.UUID)
		return false, nil
	}
	if err := a.hv.Destroy(ctx, d.UUID); err != nil {
		return false, fmt.Errorf("destroy %s: %w", d.Name, err)
	}
	if err := a.hv.Undefine(ctx, d.UUID); err != nil {
		return false, fmt.Errorf("undefine %s: %w", d.Name, err)
	}
	a.owned.forget(d.UUID)
	return true, nil
}

// macsInUse collects the MAC of every interface of every domain on the
// host, guests included, so a new appliance never collides with anything
// that libvirt knows. Provisioning is rare; reading every domain's XML then
// is cheap insurance.
func (a *Agent) macsInUse(ctx context.Context) (appliance.MACMap, error) {
	used := appliance.NewMACMap()
	doms, err := a.hv.ListDomains(ctx)
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	for _, d := range doms {
		x, err := a.hv.DomainXML(ctx, d.UUID, false)
		if errors.Is(err, hypervisor.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read XML of %s: %w", d.Name, err)
		}
		for _, m := range appliance.InstanceMACs(x) {
			used.Add(m)
		}
	}
	return used, nil
}

func macStrings(macs []net.HardwareAddr) []string {
	out := make([]string, len(macs))
	for i, m := range macs {
		out[i] = m.String()
	}
	return out
}
