package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/vsagent/vsagent/intercept"
	"github.com/vsagent/vsagent/internal/afpacket"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/netnsutil"
	"github.com/vsagent/vsagent/internal/xdpfast"
	"github.com/vsagent/vsagent/sourceroute"
)

// DMPortNames returns the two ends of the DM's intercept link: the backend
// redirects guests' frames out of the first, and the engine reads them on
// the second, where they arrive as received frames.
func DMPortNames(port string) (redirectTo, readOn string) {
	peer := port + "-in"
	if len(peer) > 15 {
		peer = port[:12] + "-in"
	}
	return port, peer
}

// EnsureDMPort creates the DM's intercept link (a veth pair) in the network
// namespace at netnsPath ("" for the current one) unless it exists, and
// brings both ends up. Neither end has an address, and IPv6 is off on both,
// so the host stack never answers or originates frames there.
func EnsureDMPort(netnsPath, port string) (redirectTo, readOn string, err error) {
	redirectTo, readOn = DMPortNames(port)
	err = netnsutil.Do(netnsPath, func() error {
		if _, err := netlink.LinkByName(redirectTo); err != nil {
			var notFound netlink.LinkNotFoundError
			if !errors.As(err, &notFound) {
				return fmt.Errorf("look up %s: %w", redirectTo, err)
			}
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: redirectTo, MTU: 9000}, PeerName: readOn}
			if err := netlink.LinkAdd(veth); err != nil {
				return fmt.Errorf("create DM link %s/%s: %w", redirectTo, readOn, err)
			}
		}
		for _, name := range []string{redirectTo, readOn} {
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0)
			l, err := netlink.LinkByName(name)
			if err != nil {
				return fmt.Errorf("look up %s: %w", name, err)
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("bring %s up: %w", name, err)
			}
		}
		return nil
	})
	return redirectTo, readOn, err
}

// hostDMPorts sets up where the backend diverts guests' frames to and where
// the engine reads them, by backend:
//   - tc-redirect and macvtap: the DM's intercept link, a veth pair
//     (EnsureDMPort);
//   - sriov-vlan: the DM's own VF, named by [dataplane] port, which the
//     NIC's switch hands every diverted guest's frames, tagged with the
//     guest's intercept VLAN; the engine reads it because the guests'
//     interfaces are tagged there, so there is no separate intercept port;
//   - switchdev: nothing; every guest VF has a representor of its own that
//     the engine reads (a Dedicated port).
func hostDMPorts(netnsPath string, cfg *config.Config) (redirectTo, readOn string, err error) {
	switch cfg.Intercept.Backend {
	case intercept.BackendSwitchdev:
		return "", "", nil
	case intercept.BackendSRIOVVLAN:
		port := cfg.Dataplane.Port
		err := netnsutil.Do(netnsPath, func() error {
			l, err := netlink.LinkByName(port)
			if err != nil {
				return fmt.Errorf("[dataplane] port %q must name the DM's VF netdev for the %s backend: %w", port, intercept.BackendSRIOVVLAN, err)
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("bring %s up: %w", port, err)
			}
			return nil
		})
		return port, "", err
	}
	return EnsureDMPort(netnsPath, cfg.Dataplane.Port)
}

// PacketPorts returns port openers backed by AF_PACKET rings, opened in the
// network namespace at netnsPath ("" for the current one).
func PacketPorts(netnsPath string) (open, openTx sourceroute.PortOpener) {
	opener := func(txOnly bool) sourceroute.PortOpener {
		return func(name string) (sourceroute.Port, error) {
			var s *afpacket.Socket
			err := netnsutil.Do(netnsPath, func() error {
				var err error
				s, err = afpacket.Open(afpacket.Config{Iface: name, TxOnly: txOnly})
				return err
			})
			if err != nil {
				return nil, err
			}
			return s, nil
		}
	}
	return opener(false), opener(true)
}

// NewHostDataplane wires a distribution manager the way a host runs it: the
// DM's intercept link, the configured intercept backend and AF_PACKET
// ports, all in the network namespace at netnsPath ("" for the current
// one). The caller runs it (Run) and gives it to the agent as its
// Dataplane.
func NewHostDataplane(cfg *config.Config, domains intercept.Domains, hostID, netnsPath string, log *slog.Logger, onEvent func(sourceroute.Event)) (*DistributionManager, error) {
	redirectTo, readOn, err := hostDMPorts(netnsPath, cfg)
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	// Taps go to tc-redirect and direct interfaces to macvtap, whichever of
	// the two the configuration names: a host has both kinds of guest.
	backend, err := intercept.ForHost(cfg.Intercept.Backend, intercept.Deps{NetNS: netnsPath, Logger: log, Domains: domains})
	if err != nil {
		return nil, fmt.Errorf("intercept backend %q: %w", cfg.Intercept.Backend, err)
	}
	open, openTx := PacketPorts(netnsPath)
	fast := NewFastPath(cfg, netnsPath, log)
	dm, err := NewDistributionManager(DMConfig{
		Config: cfg, HostID: hostID, Backend: backend, Domains: domains,
		RedirectPort: redirectTo, InterceptPort: readOn, Open: open, OpenTx: openTx,
		Logger: log, OnEvent: onEvent, FastPath: fast,
	})
	if c, ok := fast.(io.Closer); ok && err != nil {
		c.Close()
	}
	return dm, err
}

// NewFastPath loads the kernel fast path for ports in the network namespace
// at netnsPath ("" for the current one), or returns nil, having said why,
// when the configuration turns it off or the kernel cannot load it: the
// userspace path then carries everything.
func NewFastPath(cfg *config.Config, netnsPath string, log *slog.Logger) sourceroute.FastPath {
	if !cfg.Dataplane.FastPath {
		return nil
	}
	// The intercept link of hostDMPorts: its jumbo MTU rules native XDP
	// out on the end the engine reads, so the fast path works on the
	// other end's egress, where the backend's redirects enter it.
	var feeds map[string]string
	switch cfg.Intercept.Backend {
	case intercept.BackendSwitchdev, intercept.BackendSRIOVVLAN:
	default:
		redirectTo, readOn := DMPortNames(cfg.Dataplane.Port)
		feeds = map[string]string{readOn: redirectTo}
	}
	fp, err := xdpfast.New(xdpfast.Config{
		Do:         func(fn func() error) error { return netnsutil.Do(netnsPath, fn) },
		MaxEntries: 2 * cfg.Dataplane.MaxFlows,
		Feeds:      feeds,
	})
	if err != nil {
		log.Warn("no kernel fast path; every frame takes the userspace path", "err", err)
		return nil
	}
	return fp
}
