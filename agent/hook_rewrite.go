package agent

import (
	"context"
	"errors"
	"fmt"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/hookapi"
)

// EventHookRewired: libvirt's migrate or restore hook handed the agent an
// incoming guest whose direct interfaces it wired to the distribution
// manager in the guest's XML, so that the guest arrives diverted.
const EventHookRewired EventKind = "hook-rewired"

// domainXMLRewriter is an intercept backend that can wire a guest's
// interfaces in its definition before the guest runs (macvtap: libvirt
// rewires a direct interface of a running guest only by unplugging it).
type domainXMLRewriter interface {
	DivertDomainXML(doc, port string) (out string, changed bool, err error)
}

// HookRewrite answers libvirt's "migrate begin" and "restore begin" for a
// guest that needs inspection: doc, the incoming XML, comes back with each
// direct interface on the distribution manager's port, as the macvtap
// backend wires it live, and the originals recorded in the guest's
// metadata. From its first instruction the guest then reaches nothing but
// the DM, which drops its frames until the gate after STARTED attaches its
// chain; that gate finds the interfaces diverted and adopts them without
// unplugging anything, and a later revert restores the originals.
//
// It only rewrites text: libvirt holds the guest's job while the hook runs,
// so nothing here may call libvirt about it. With a backend that diverts in
// the kernel (taps) or none at all, the XML is kept ("").
func (a *Agent) HookRewrite(ctx context.Context, g hookapi.Guest, doc string) (string, error) {
	dm, ok := a.dp.(*DistributionManager)
	if !ok {
		return "", nil
	}
	rw, ok := dm.cfg.Backend.(domainXMLRewriter)
	if !ok {
		return "", nil
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	out, changed, err := rw.DivertDomainXML(doc, dm.cfg.RedirectPort)
	if err != nil {
		return "", fmt.Errorf("rewire %s: %w", g.Domain.Name, err)
	}
	if !changed {
		return "", nil
	}
	a.log.Info("incoming guest wired to the distribution manager in its XML",
		"guest", g.Domain.Name, "domain_uuid", g.Domain.UUID, "port", dm.cfg.RedirectPort)
	a.recordEvent(Event{Kind: EventHookRewired, Guest: g.Domain.Name,
		Message: "direct interfaces wired to the distribution manager's port " + dm.cfg.RedirectPort + " in the incoming XML"})
	return out, nil
}

// The hook handler asks the agent to rewrite incoming XML.
var _ hookapi.Rewriter = (*Agent)(nil)

// startHolder is an intercept backend that can keep a direct interface from
// carrying frames at start begin with the kernel alone (see
// intercept's macvtap HoldAtStart).
type startHolder interface {
	HoldAtStart(ctx context.Context, ifc intercept.Iface, port string) error
}

// holdDirectAtStart holds each direct interface of a starting guest on its
// macvtap, when the backend can, and returns the guest's domain without
// them: what is left is for the DM's hold (taps, which tc-redirect diverts
// without libvirt). A direct interface the backend cannot hold stays in
// what is returned, so that the DM's hold refuses it as before.
func (a *Agent) holdDirectAtStart(ctx context.Context, dm *DistributionManager, g hookapi.Guest) (*libvirtxml.Domain, error) {
	h, ok := dm.cfg.Backend.(startHolder)
	if !ok || g.Domain.Devices == nil {
		return g.Domain, nil
	}
	rest, devices := *g.Domain, *g.Domain.Devices
	devices.Interfaces = nil
	rest.Devices = &devices
	held := 0
	for i, ifc := range intercept.InterfacesOf(g.Domain) {
		if ifc.Type == intercept.TypeDirect {
			err := h.HoldAtStart(ctx, ifc, dm.cfg.RedirectPort)
			if err == nil {
				held++
				continue
			}
			if !errors.Is(err, intercept.ErrUnsupported) {
				return nil, err
			}
		}
		devices.Interfaces = append(devices.Interfaces, g.Domain.Devices.Interfaces[i])
	}
	if held > 0 {
		a.recordEvent(Event{Kind: EventHookHeld, Guest: g.Domain.Name,
			Message: "direct interfaces redirect every frame to the distribution manager until they are diverted"})
	}
	return &rest, nil
}
