package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/config"
)

// reconcile brings one domain to its desired state. It re-reads everything
// from libvirt, so it does not matter which event (if any) caused it.
func (a *Agent) reconcile(ctx context.Context, uuid string) error {
	dom, err := a.hv.Lookup(ctx, uuid)
	if errors.Is(err, hypervisor.ErrNotFound) {
		return a.guestGone(ctx, uuid, "domain no longer exists")
	}
	if err != nil {
		return fmt.Errorf("look up domain %s: %w", uuid, err)
	}
	if _, owned := a.owned.lookup(uuid); owned {
		return a.reconcileAppliance(ctx, dom)
	}
	xmlDom, err := a.hv.DomainXML(ctx, uuid, false)
	if errors.Is(err, hypervisor.ErrNotFound) {
		return a.guestGone(ctx, uuid, "domain no longer exists")
	}
	if err != nil {
		return fmt.Errorf("read XML of %s: %w", dom.Name, err)
	}
	if owner, ok := appliance.OwnerOf(xmlDom); ok {
		a.owned.remember(uuid, owner, dom.Name)
		return a.reconcileAppliance(ctx, dom)
	}
	a.owned.rememberForeign(uuid)
	return a.reconcileGuest(ctx, dom, xmlDom)
}

func (a *Agent) reconcileGuest(ctx context.Context, dom hypervisor.Domain, xmlDom *libvirtxml.Domain) error {
	log := a.log.With("guest", dom.Name, "domain_uuid", dom.UUID)
	cfg := a.Config()

	bound, err := a.readMetadata(ctx, dom.UUID, hypervisor.BindingNamespace)
	if err != nil {
		return err
	}
	boundPolicy, bindErr := config.ParseBinding(bound)
	gateXML, err := a.readMetadata(ctx, dom.UUID, hypervisor.StateNamespace)
	if err != nil {
		return err
	}
	gate, gated, err := parseGateRecord(gateXML)
	if err != nil {
		// A record we cannot read is treated as ours: better to finish the
		// gate (and resume) than to strand a guest paused forever.
		log.Warn("unreadable gate record; treating the guest as gated by vsagent", "error", err)
		gated, gate = true, gateRecord{Resume: true}
	}

	var res config.Resolution
	if bindErr != nil {
		res = config.Resolution{Reason: "unreadable metadata binding", Err: bindErr}
	} else {
		res = cfg.Resolve(dom.Name, boundPolicy)
	}

	if !dom.State.Active() {
		// Nothing to inspect while it is off; a gate left on a stopped guest
		// is stale (the next start is gated afresh).
		if gated {
			if err := a.hv.SetMetadata(ctx, dom.UUID, hypervisor.StateNamespace, ""); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
				return fmt.Errorf("clear stale gate of %s: %w", dom.Name, err)
			}
		}
		return a.guestGone(ctx, dom.UUID, "guest is "+dom.State.String())
	}

	if res.Policy == nil && res.Err == nil {
		// Unmanaged guest. If a gate of ours still holds it (its policy was
		// removed), release it: no gate may outlive its reason.
		if gated {
			if err := a.releaseGate(ctx, dom, gate, log); err != nil {
				return err
			}
		}
		a.setGuest(dom, guestStatus{State: GuestUnmanaged, Reason: res.Reason})
		// The dataplane learns unmanaged guests too: they are destinations
		// of managed guests' flows, and their replies must be seen.
		if err := a.dp.Attach(ctx, GuestPlan{UUID: dom.UUID, Name: dom.Name, Domain: xmlDom}); err != nil {
			return fmt.Errorf("attach dataplane for unmanaged %s: %w", dom.Name, err)
		}
		if a.setNeeds(dom.UUID, nil) {
			a.queue.add(gcKey)
		}
		return nil
	}

	st := guestStatus{State: GuestGated, Reason: res.Reason}
	var needs []string
	if res.Policy != nil {
		st.Policy = res.Policy.Name
		needs = chainAppliances(res.Policy)
		st.Chain = slices.Clone(res.Policy.Chain)
	}
	a.setNeeds(dom.UUID, needs)

	if res.Err != nil {
		// Inspection is asked for but cannot be given: hold the guest.
		if _, err := a.gateGuest(ctx, dom, xmlDom, gate, gated, res.Policy, []string{"policy"}, log); err != nil {
			return err
		}
		st.LastError = res.Err.Error()
		a.setGuest(dom, st)
		a.recordEvent(Event{Kind: EventGateHeld, Guest: dom.Name, Message: res.Err.Error()})
		return res.Err
	}

	// A guest already inspected keeps running when an instance of its
	// chain stops or crashes: the instance stays in its plan as failed, and
	// the appliance's on_failure decides about its traffic until the
	// autoscaler has recreated it.
	a.mu.Lock()
	inspected := a.guests[dom.UUID] != nil && a.guests[dom.UUID].State == GuestInspected
	a.mu.Unlock()
	ready, missing, err := a.readyInstances(ctx, needs, inspected)
	if err != nil {
		return err
	}
	if len(missing) > 0 && inspected {
		// Caught between the removal of an instance being recreated and
		// its new definition: the recreation holds provisionMu throughout,
		// so having had the lock means it is over.
		a.provisionMu.Lock()
		a.provisionMu.Unlock()
		if ready, missing, err = a.readyInstances(ctx, needs, inspected); err != nil {
			return err
		}
	}
	if len(missing) > 0 {
		if early, ok := a.chainBeforeRun(ctx, dom, needs, log); ok {
			ready, missing = early, nil
		}
	}
	if len(missing) > 0 {
		gate, err = a.gateGuest(ctx, dom, xmlDom, gate, gated, res.Policy, missing, log)
		if err != nil {
			return err
		}
		gated = true
		a.setGuest(dom, st)
		ready, err = a.provision(ctx, needs, log)
		if err != nil {
			st.LastError = err.Error()
			a.setGuest(dom, st)
			if waited := a.opts.Now().Sub(gate.Since); waited > cfg.Agent.GateTimeout {
				log.Error("guest still gated past gate_timeout: its appliances cannot be provisioned; it stays paused (fail closed)",
					"waited", waited.Round(1e6), "gate_timeout", cfg.Agent.GateTimeout, "error", err)
				a.recordEvent(Event{Kind: EventGateTimeout, Guest: dom.Name, Message: err.Error()})
			}
			return err
		}
	}

	plan := GuestPlan{UUID: dom.UUID, Name: dom.Name, Policy: res.Policy, Domain: xmlDom, Appliances: ready}
	if err := a.dp.Attach(ctx, plan); err != nil {
		if errors.Is(err, hypervisor.ErrPaused) && gated {
			// Some interfaces can only be rewired on a running guest (libvirt
			// cannot unplug a NIC from a paused one). The backend has taken
			// their links down first, so resuming lets no frame through; the
			// retry finishes the rewiring.
			log.Info("resuming the gated guest so its interfaces can be rewired; their links are down", "error", err)
			if rerr := a.releaseGate(ctx, dom, gate, log); rerr != nil {
				return errors.Join(err, rerr)
			}
			return fmt.Errorf("attach dataplane for %s: %w", dom.Name, err)
		}
		if !gated {
			if _, gerr := a.gateGuest(ctx, dom, xmlDom, gate, gated, res.Policy, []string{"dataplane"}, log); gerr != nil {
				return errors.Join(err, gerr)
			}
		}
		st.LastError = err.Error()
		a.setGuest(dom, st)
		return fmt.Errorf("attach dataplane for %s: %w", dom.Name, err)
	}

	if gated {
		if err := a.releaseGate(ctx, dom, gate, log); err != nil {
			return err
		}
	}
	st.State = GuestInspected
	st.LastError = ""
	a.setGuest(dom, st)
	return nil
}

// gateGuest records the gate first and pauses second: if the agent dies in
// between, the record makes the next agent finish the gate, whereas a pause
// without a record would look like the operator's own and stay forever.
func (a *Agent) gateGuest(ctx context.Context, dom hypervisor.Domain, xmlDom *libvirtxml.Domain, gate gateRecord, gated bool, pol *config.Policy, waiting []string, log *slog.Logger) (gateRecord, error) {
	if h, ok := a.dp.(interface {
		Hold(context.Context, GuestPlan) error
	}); ok {
		// Belt and braces: the dataplane drops the guest's frames while it
		// waits, in case it runs before the pause takes hold.
		if err := h.Hold(ctx, GuestPlan{UUID: dom.UUID, Name: dom.Name, Policy: pol, Domain: xmlDom}); err != nil {
			log.Info("cannot hold the guest in the dataplane; relying on the pause", "error", err)
		}
	}
	policy := ""
	if pol != nil {
		policy = pol.Name
	}
	if !gated {
		gate = gateRecord{
			Since:   a.opts.Now().UTC(),
			Policy:  policy,
			Waiting: strings.Join(waiting, ","),
			Resume:  dom.State == hypervisor.StateRunning || dom.AboutToRun(),
		}
		x, err := gate.marshal()
		if err != nil {
			return gate, err
		}
		if err := a.hv.SetMetadata(ctx, dom.UUID, hypervisor.StateNamespace, x); err != nil {
			return gate, fmt.Errorf("record gate on %s: %w", dom.Name, err)
		}
		log.Info("guest gated: waiting for its appliances", "policy", policy, "waiting", gate.Waiting)
		a.recordEvent(Event{Kind: EventGated, Guest: dom.Name, Message: "waiting for " + gate.Waiting})
	}
	if dom.State == hypervisor.StateRunning || dom.AboutToRun() {
		if err := a.hv.Suspend(ctx, dom.UUID); err != nil {
			return gate, fmt.Errorf("pause %s: %w", dom.Name, err)
		}
	}
	return gate, nil
}

// releaseGate resumes the guest if the gate paused it, then removes the
// record; in that order, so a crash in between leaves a record that makes
// the next agent finish the job rather than a paused guest nobody owns.
func (a *Agent) releaseGate(ctx context.Context, dom hypervisor.Domain, gate gateRecord, log *slog.Logger) error {
	if gate.Resume {
		if err := a.hv.Resume(ctx, dom.UUID); err != nil {
			return fmt.Errorf("resume %s: %w", dom.Name, err)
		}
	}
	if err := a.hv.SetMetadata(ctx, dom.UUID, hypervisor.StateNamespace, ""); err != nil {
		return fmt.Errorf("clear gate of %s: %w", dom.Name, err)
	}
	held := a.opts.Now().Sub(gate.Since)
	log.Info("gate released", "held", held.Round(1e6), "resumed", gate.Resume)
	a.recordEvent(Event{Kind: EventReleased, Guest: dom.Name, Message: fmt.Sprintf("held %s", held.Round(1e6))})
	return nil
}

func (a *Agent) readMetadata(ctx context.Context, uuid, ns string) (string, error) {
	s, err := a.hv.Metadata(ctx, uuid, ns)
	if errors.Is(err, hypervisor.ErrNoMetadata) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read metadata %s of %s: %w", ns, uuid, err)
	}
	return s, nil
}

// guestGone forgets a guest that is no longer active here, removes its
// dataplane wiring and lets garbage collection see whether its appliances
// are still needed.
func (a *Agent) guestGone(ctx context.Context, uuid, why string) error {
	a.mu.Lock()
	st, known := a.guests[uuid]
	a.mu.Unlock()
	if known && st.State != GuestUnmanaged {
		a.log.Info("guest no longer needs inspection here", "guest", st.Name, "domain_uuid", uuid, "why", why)
	}
	if err := a.dropNeeds(ctx, uuid); err != nil {
		return err
	}
	a.owned.forget(uuid)
	a.mu.Lock()
	delete(a.guests, uuid)
	a.mu.Unlock()
	return nil
}

// dropNeeds removes a guest's dataplane wiring and its claim on appliances;
// garbage collection then decides whether those appliances are still needed.
func (a *Agent) dropNeeds(ctx context.Context, uuid string) error {
	if a.startingUnderHook(uuid) {
		return nil
	}
	if err := a.dp.Detach(ctx, uuid); err != nil {
		return fmt.Errorf("detach dataplane of %s: %w", uuid, err)
	}
	if a.setNeeds(uuid, nil) {
		a.queue.add(gcKey)
	}
	return nil
}
