package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/hookapi"
)

// EventHookHeld: libvirt's start hook found a guest that needs inspection
// and its interfaces now drop every frame until its chain is ready.
const EventHookHeld EventKind = "hook-held"

// HookPrepare answers libvirt's "prepare begin" for a guest that needs
// inspection: the appliances of its policy start provisioning now, while
// libvirt prepares the guest, and the hook does not wait for them (the
// gate after STARTED does). Recording the needs first keeps garbage
// collection from deleting what is being created for it.
func (a *Agent) HookPrepare(ctx context.Context, g hookapi.Guest) error {
	pol := g.Resolution.Policy
	if pol == nil {
		return nil
	}
	needs := chainAppliances(pol)
	a.setNeeds(g.Domain.UUID, needs)
	log := a.log.With("guest", g.Domain.Name, "domain_uuid", g.Domain.UUID)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.Config().Agent.GateTimeout)
	go func() {
		defer cancel()
		if _, err := a.provision(ctx, needs, log); err != nil {
			log.Warn("provisioning ahead of the start failed; the gate after STARTED retries", "error", err)
		}
	}()
	return nil
}

// HookStart answers libvirt's "start begin": the guest's taps exist and
// QEMU does not run yet (see docs/hooks.md for the measured timeline). The
// guest is held in the dataplane, so the first frame its vCPUs send is
// dropped, not forwarded, until the gate after STARTED attaches its chain.
//
// Only what diverts without calling libvirt can do this: libvirt holds the
// domain's job while the hook runs, so a libvirt call about this guest would
// wait for the hook that waits for it. Direct interfaces are held on their
// macvtaps (holdDirectAtStart), taps by tc-redirect. With another backend the
// start proceeds and only the gate after STARTED protects the guest: its
// window stays open, which is logged rather than refused, since refusing
// would make every inspected guest unstartable.
func (a *Agent) HookStart(ctx context.Context, g hookapi.Guest) error {
	log := a.log.With("guest", g.Domain.Name, "domain_uuid", g.Domain.UUID)
	dm, ok := a.dp.(*DistributionManager)
	if !ok {
		log.Warn("no distribution manager to hold the guest before it runs; relying on the gate after STARTED")
		return nil
	}
	rest, err := a.holdDirectAtStart(ctx, dm, g)
	if err != nil {
		return fmt.Errorf("hold %s in the kernel: %w", g.Domain.Name, err)
	}
	if len(intercept.InterfacesOf(rest)) == 0 {
		return nil
	}
	if name := dm.cfg.Backend.Name(); name != intercept.BackendTCRedirect {
		log.Warn("the intercept backend rewires interfaces through libvirt and cannot hold the guest before it runs; relying on the gate after STARTED", "backend", name)
		return nil
	}
	plan := GuestPlan{UUID: g.Domain.UUID, Name: g.Domain.Name, Policy: g.Resolution.Policy, Domain: rest}
	if err := dm.Hold(ctx, plan); err != nil {
		return fmt.Errorf("hold %s in the dataplane: %w", g.Domain.Name, err)
	}
	hookStarts.Store(hookStartKey{a, g.Domain.UUID}, a.opts.Now())
	a.recordEvent(Event{Kind: EventHookHeld, Guest: g.Domain.Name, Message: "interfaces drop every frame until the chain is ready"})
	return nil
}

// hookStarts remembers, per agent and domain UUID, when the start hook held
// a guest. Until libvirt reports the guest running, a reconcile sees it shut
// off (a DEFINED event just before the start is enough) and would detach
// it, reopening the window the hold closed. Kept outside Agent so that the
// hook's bookkeeping stays in this file.
var hookStarts sync.Map // hookStartKey → time.Time

type hookStartKey struct {
	a    *Agent
	uuid string
}

// hookStartGrace bounds how long a hold may wait for libvirt to report the
// guest running: QEMU starts in well under a second. A start that failed
// leaves a hold on a tap that no longer exists, and a guest restarted into
// the same state and stopped again within the grace keeps its hold and its
// appliances; the first reconcile after the grace removes both.
const hookStartGrace = 30 * time.Second

// startingUnderHook reports whether uuid was held by the start hook and the
// agent has not seen it running since, so that its hold must survive a
// reconcile that finds it shut off.
func (a *Agent) startingUnderHook(uuid string) bool {
	key := hookStartKey{a, uuid}
	v, ok := hookStarts.Load(key)
	if !ok {
		return false
	}
	held := v.(time.Time)
	a.mu.Lock()
	st, known := a.guests[uuid]
	// A status that changed after the hold was written by a reconcile that
	// saw the guest running: the start is over.
	seen := known && st.Since.After(held)
	a.mu.Unlock()
	if seen || a.opts.Now().Sub(held) > hookStartGrace {
		hookStarts.Delete(key)
		return false
	}
	return true
}
