package agent

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/hookapi"
	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/netnsutil"
	"github.com/vsagent/vsagent/internal/vsafiltertest"
)

var sentRound = regexp.MustCompile(`hooktest-sent (\d+)\r`)

// lastRound is the highest round the talking guest's console reports.
func lastRound(console string) int {
	b, _ := os.ReadFile(console)
	high := 0
	for _, m := range sentRound.FindAllSubmatch(bytes.ReplaceAll(b, []byte{0}, nil), -1) {
		if n, _ := strconv.Atoi(string(m[1])); n > high {
			high = n
		}
	}
	return high
}

// startTalkingDirectGuest starts the talking web-1 (talkingScript) on a
// macvtap on parent in bridge mode and waits until it has sent rounds
// rounds.
func (h *hookHost) startTalkingDirectGuest(t *testing.T, ctx context.Context, parent string, rounds int) (uuid, console string) {
	uuid, console = h.startGuestOn(t, ctx, libvirtlab.GuestInterface{Type: "direct", Source: parent, Mode: "bridge"}, talkingScript())
	bootCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	waitFor(t, bootCtx, "the guest to boot and send", func() bool { return lastRound(console) >= rounds })
	return uuid, console
}

// checkNothingReached checks that web-1 runs, that none of its frames
// reached h's peer since it had seen peerBefore of them, and that the DM
// dropped some as from an unknown source (more than unknownBefore): its
// frames arrive at the DM, which does not know the guest yet.
func (h *hookHost) checkNothingReached(t *testing.T, ctx context.Context, uuid string, peerBefore, unknownBefore uint64) {
	t.Helper()
	if st, err := h.conn.Lookup(ctx, uuid); err != nil || st.State != hypervisor.StateRunning {
		t.Fatalf("web-1 is %v (%v), want running: the agent must not have gated it yet", st.State, err)
	}
	if n := h.atPeer.all() - peerBefore; n != 0 {
		t.Fatalf("%d frames of web-1 reached the peer before the agent acted (%s)", n, h.atPeer)
	}
	drops := h.dm.Engine().Counters().Drops
	t.Logf("%s: DM drops before the agent acted: %v", h.lab.Name, drops)
	if drops["unknown_source"] <= unknownBefore {
		t.Fatalf("the DM saw nothing of web-1: its frames went elsewhere; counters %+v", h.dm.Engine().Counters())
	}
}

// checkArrivedRewired checks that the hook rewired web-1 as it arrived on
// h (restore or migration): its direct interface runs on the DM's port in
// VEPA mode, in the network of its original parent, recorded in its
// metadata. It returns the interface and its macvtap's ifindex.
func (h *hookHost) checkArrivedRewired(t *testing.T, ctx context.Context, uuid, parent string) (intercept.Iface, int) {
	t.Helper()
	if !hasEventFor(h.ag, EventHookRewired, "web-1") {
		t.Fatalf("%s: no hook-rewired event for web-1", h.lab.Name)
	}
	dom, ifc, index := h.liveDirect(t, ctx, uuid)
	if ifc.Source != h.dm.cfg.RedirectPort || ifc.Mode != "vepa" || ifc.Network != parent {
		t.Fatalf("web-1 arrived on %s in %s mode, network %s; want %s, vepa, %s", ifc.Source, ifc.Mode, ifc.Network, h.dm.cfg.RedirectPort, parent)
	}
	if dom.Metadata == nil || !strings.Contains(dom.Metadata.XML, intercept.Namespace) {
		t.Fatal("web-1 arrived without an intercept record in its metadata")
	}
	return ifc, index
}

// liveDirect is web-1's direct interface as libvirt runs it, and the
// ifindex of its macvtap in the lab's namespace (a new macvtap, as a
// hot-plug makes, has a new one).
func (h *hookHost) liveDirect(t *testing.T, ctx context.Context, uuid string) (*libvirtxml.Domain, intercept.Iface, int) {
	t.Helper()
	dom, err := h.conn.DomainXML(ctx, uuid, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range intercept.InterfacesOf(dom) {
		if ifc.Type != intercept.TypeDirect {
			continue
		}
		index := 0
		if err := netnsutil.Do(filepath.Join("/var/run/netns", h.lab.NetNS), func() error {
			l, err := netlink.LinkByName(ifc.Target)
			if err == nil {
				index = l.Attrs().Index
			}
			return err
		}); err != nil {
			t.Fatalf("macvtap %s of web-1: %v", ifc.Target, err)
		}
		return dom, ifc, index
	}
	t.Fatalf("web-1 has no direct interface")
	return nil, intercept.Iface{}, 0
}

// withoutAssigned is x without what libvirt numbers itself when it plugs
// an interface in (alias netN, macvtapN): a revert cannot ask for those.
func withoutAssigned(t *testing.T, x *libvirtxml.DomainInterface) string {
	t.Helper()
	c := *x
	if c.Alias != nil && !strings.HasPrefix(c.Alias.Name, "ua-") {
		c.Alias = nil
	}
	if c.Target != nil && strings.HasPrefix(c.Target.Dev, "macvtap") {
		c.Target = nil
	}
	doc, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestHookRestoreRewiresMacvtapGuest saves a real QEMU guest whose
// interface is a macvtap (type='direct') in bridge mode on a veth, and
// restores it, on a host whose agent diverts direct interfaces by macvtap.
// The restore hook hands the agent the saved XML, with the operator's
// interface, and libvirt restores the rewritten one: the guest comes back
// with its macvtap already on the DM's port in VEPA mode and its original
// recorded. Until the agent (kept
// from seeing libvirt's events) reacts, the running guest reaches nothing:
// not one frame arrives at its peer. Once it reacts, it adopts the
// diversion (the same macvtap, no unplug), attaches the chain, and only
// inspected frames reach the peer. When the guest no longer needs
// inspection the original interface is restored.
func TestHookRestoreRewiresMacvtapGuest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	h, parent := newMacvtapHookHost(t, ctx)

	// web-1 boots with its own interface, held on its macvtap by the start
	// hook (the agent does not see it start): saved now, its image holds
	// the operator's interface.
	uuid, console := h.startTalkingDirectGuest(t, ctx, parent, 10)
	_, original, _ := h.liveDirect(t, ctx, uuid)
	if original.Source != parent || original.Mode != "bridge" {
		t.Fatalf("web-1 started on %s in %s mode, want %s, bridge", original.Source, original.Mode, parent)
	}

	image := filepath.Join(h.dir, "web-1.save")
	if out, err := exec.CommandContext(ctx, "virsh", "-c", h.lab.URI(), "save", "web-1", image).CombinedOutput(); err != nil {
		t.Fatalf("virsh save: %v: %s", err, out)
	}
	before := lastRound(console)
	atPeer := h.atPeer.all()
	unknown := h.dm.Engine().Counters().Drops["unknown_source"]
	if out, err := exec.CommandContext(ctx, "virsh", "-c", h.lab.URI(), "restore", image).CombinedOutput(); err != nil {
		t.Fatalf("virsh restore (the hook must allow it): %v: %s", err, out)
	}
	restored, index := h.checkArrivedRewired(t, ctx, uuid, parent)

	// The guest runs and talks, and nothing of it reaches the peer: the DM
	// does not know it yet and drops its frames.
	waitFor(t, ctx, "the restored guest to go on sending", func() bool { return lastRound(console) >= before+10 })
	h.checkNothingReached(t, ctx, uuid, atPeer, unknown)

	// The agent sees the events: it adopts the diversion and attaches the
	// chain. Only the chain's frames reach the peer.
	denied, chained := h.atPeer.denied.Load(), h.atPeer.chained()
	fw := h.startFilter(t, ctx, vsafiltertest.Build(t, ".."))
	close(h.hv.release)
	waitFor(t, ctx, "web-1 inspected", func() bool { return h.guestState("web-1") == GuestInspected })
	waitFor(t, ctx, "pings through the chain at the peer", func() bool { return h.atPeer.echo.Load() >= 5 })
	waitFor(t, ctx, "SYNs denied by the chain", func() bool { return fw.Counters(t).Appliance.Dropped >= 5 })
	c := fw.Counters(t).Appliance
	t.Logf("at the peer %s; fw received %d forwarded %d dropped %d", h.atPeer, c.Received, c.Forwarded, c.Dropped)
	if d := h.atPeer.denied.Load() - denied; d != 0 {
		t.Errorf("%d TCP segments to port %d reached the peer after the restore: they bypassed the chain", d, denyPort)
	}
	if n := h.atPeer.chained() - chained; n > c.Forwarded {
		t.Errorf("%d unicast frames of web-1 reached the peer after the restore, but the chain forwarded only %d", n, c.Forwarded)
	}
	_, adopted, adoptedIndex := h.liveDirect(t, ctx, uuid)
	if adopted.Target != restored.Target || adoptedIndex != index || adopted.Source != restored.Source {
		t.Errorf("the agent rewired web-1 (macvtap %s #%d on %s, was %s #%d on %s): it must adopt the restored diversion",
			adopted.Target, adoptedIndex, adopted.Source, restored.Target, index, restored.Source)
	}

	// The guest no longer needs inspection: the operator's interface comes
	// back, and its record goes.
	h.withoutPolicyFor(t)
	waitFor(t, ctx, "web-1 back on its own parent", func() bool {
		dom, err := h.conn.DomainXML(ctx, uuid, false)
		if err != nil {
			return false
		}
		for _, ifc := range intercept.InterfacesOf(dom) {
			if ifc.Type == intercept.TypeDirect && ifc.Source == parent {
				return true
			}
		}
		return false
	})
	dom, back, _ := h.liveDirect(t, ctx, uuid)
	if got, want := withoutAssigned(t, back.XML), withoutAssigned(t, original.XML); got != want {
		t.Errorf("revert did not restore web-1's interface:\n got %s\nwant %s", got, want)
	}
	if dom.Metadata != nil && strings.Contains(dom.Metadata.XML, intercept.Namespace) {
		t.Errorf("intercept record left after the revert: %s", dom.Metadata.XML)
	}
}

// newMacvtapHookHost is a hook host whose agent diverts direct interfaces
// by macvtap, with parent, a veth whose other end is on br0 (the peer's
// segment), for web-1's macvtap.
func newMacvtapHookHost(t *testing.T, ctx context.Context) (h *hookHost, parent string) {
	h = newHookHostWith(t, ctx, buildHook(t, ctx), hookHostOptions{backend: intercept.BackendMacvtap})
	parent = netnstest.UniqueName("vp")
	bridged := netnstest.UniqueName("vq")
	hostIP(t, "-n", h.lab.NetNS, "link", "add", parent, "type", "veth", "peer", "name", bridged)
	hostIP(t, "-n", h.lab.NetNS, "link", "set", bridged, "master", "br0", "up")
	hostIP(t, "-n", h.lab.NetNS, "link", "set", parent, "up")
	return h, parent
}

// TestHookHoldsMacvtapGuestBeforeItsVCPUsRun starts a real QEMU guest on a
// macvtap with the hook installed, while the agent is kept from seeing
// libvirt's events: the start hook holds the macvtap in the kernel, and
// the running, talking guest gets not one frame to its peer. Once the agent
// reacts it diverts the interface onto the DM's port.
func TestHookHoldsMacvtapGuestBeforeItsVCPUsRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	h, parent := newMacvtapHookHost(t, ctx)
	uuid, _ := h.startTalkingDirectGuest(t, ctx, parent, 15)
	if !hasEventFor(h.ag, EventHookHeld, "web-1") {
		t.Fatal("no hook-held event for web-1")
	}
	h.checkNothingReached(t, ctx, uuid, 0, 0)

	h.startFilter(t, ctx, vsafiltertest.Build(t, ".."))
	close(h.hv.release)
	waitFor(t, ctx, "web-1 inspected and diverted", func() bool {
		if h.guestState("web-1") != GuestInspected {
			return false
		}
		dom, err := h.conn.DomainXML(ctx, uuid, false)
		if err != nil {
			return false
		}
		ifc := intercept.InterfacesOf(dom)
		return len(ifc) == 1 && ifc[0].Source == h.dm.cfg.RedirectPort && ifc[0].Mode == "vepa"
	})
	if n := h.atPeer.denied.Load(); n != 0 {
		t.Errorf("%d TCP segments to port %d reached the peer: they bypassed the chain", n, denyPort)
	}
}

// withoutPolicyFor makes h's agent see web-1 as a guest without a policy,
// as on a host where nothing needs inspecting it.
func (h *hookHost) withoutPolicyFor(t *testing.T) {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(h.dir, "vsagent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(h.dir, "vsagent-nopolicy.toml")
	if err := os.WriteFile(path, bytes.Replace(text, []byte(`domains = ["web-*"]`), []byte(`domains = ["db-*"]`), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	h.ag.SetConfig(cfg)
}

// TestHookMigrationRewiresMacvtapGuest live-migrates a talking guest on a
// macvtap from a host where it needs no inspection (so it runs on its own
// parent there) to one where it does and the agent diverts direct
// interfaces by macvtap. The destination's migrate hook rewires it in the
// incoming XML: it arrives on the DM's port, reaches nothing before the
// destination's agent reacts, and is then adopted (same macvtap) and
// inspected.
func TestHookMigrationRewiresMacvtapGuest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	src, parent := newMacvtapHookHost(t, ctx)
	dst, _ := newMacvtapHookHost(t, ctx)
	src.withoutPolicyFor(t)
	close(src.hv.release)
	uuid, console := src.startTalkingDirectGuest(t, ctx, parent, 1)
	waitFor(t, ctx, "the guest to talk to the source's peer", func() bool { return src.atPeer.echo.Load() > 0 })

	// The destination's appliance is provisioned first, as its prepare hook
	// would, and boots before the migration: a TCG guest migrated while
	// another boots on the same two cores may stop sending (hooks.md, "TCG
	// guests do not always survive live migration here").
	def, err := src.conn.DomainXML(ctx, uuid, false)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := def.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	g, err := hookapi.ResolveGuest(dst.ag.Config(), hookapi.Request{Domain: "web-1", XML: doc})
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.ag.HookPrepare(ctx, g); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the destination's appliance running", func() bool {
		for _, a := range dst.ag.Appliances() {
			if d, err := dst.conn.Lookup(ctx, a.UUID); err == nil && d.State == hypervisor.StateRunning {
				return true
			}
		}
		return false
	})
	booted := lastRound(console) + 50
	waitFor(t, ctx, "the guest to go on talking while the appliance boots", func() bool { return lastRound(console) >= booted })

	mig := filepath.Join(t.TempDir(), "mig.sock")
	out, err := exec.CommandContext(ctx, "virsh", "-c", src.lab.URI(), "migrate", "--live", "--persistent", "--undefinesource",
		"web-1", dst.lab.URI(), "--migrateuri", "unix://"+mig).CombinedOutput()
	if err != nil {
		t.Fatalf("migrate: %v: %s", err, out)
	}
	arrived, index := dst.checkArrivedRewired(t, ctx, uuid, parent)
	before := lastRound(console)
	waitFor(t, ctx, "the migrated guest to go on sending", func() bool { return lastRound(console) >= before+10 })
	dst.checkNothingReached(t, ctx, uuid, 0, 0)

	fw := dst.startFilter(t, ctx, vsafiltertest.Build(t, ".."))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("destination DM counters: %+v; flows %+v", dst.dm.Engine().Counters(), dst.dm.Engine().Flows("web-1"))
			t.Logf("destination fw counters: %+v", fw.Counters(t).Appliance)
		}
	})
	close(dst.hv.release)
	chainCtx, chainCancel := context.WithTimeout(ctx, 90*time.Second)
	defer chainCancel()
	waitFor(t, chainCtx, "web-1 inspected on the destination", func() bool { return dst.guestState("web-1") == GuestInspected })
	dst.checkChained(t, chainCtx, fw)
	if _, adopted, adoptedIndex := dst.liveDirect(t, ctx, uuid); adopted.Target != arrived.Target || adoptedIndex != index {
		t.Errorf("the destination's agent rewired web-1 (macvtap %s #%d, arrived as %s #%d): it must adopt the migrated diversion",
			adopted.Target, adoptedIndex, arrived.Target, index)
	}
	waitFor(t, ctx, "the source to forget web-1", func() bool { return src.guestState("web-1") == "" })
}
