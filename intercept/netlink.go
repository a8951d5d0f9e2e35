package intercept

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// rtnl is a pair of route-netlink sockets in one network namespace: a
// netlink.Handle for the operations the library models, and a raw socket for
// dumps the library filters (it hides u32 hash tables, which an exact
// comparison must see).
//
// One is opened per operation: the agent changes interfaces rarely, and
// nothing then outlives the call.
type rtnl struct {
	h   *netlink.Handle
	raw *nl.SocketHandle
}

// withRTNL runs fn with netlink sockets in the namespace whose file is at
// netNS ("" for the caller's), unless ctx is already done.
func withRTNL(ctx context.Context, netNS string, fn func(*rtnl) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r, err := openRTNL(netNS)
	if err != nil {
		return err
	}
	defer r.Close()
	return fn(r)
}

// openRTNL opens the sockets in the namespace whose file is at path, or in
// the caller's namespace for "" (which then needs no setns and so no
// CAP_SYS_ADMIN).
func openRTNL(path string) (*rtnl, error) {
	ns := netns.None()
	if path != "" {
		h, err := netns.GetFromPath(path)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", path, err)
		}
		defer h.Close()
		ns = h
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return &rtnl{h: h, raw: &nl.SocketHandle{Socket: sock}}, nil
}

func (r *rtnl) Close() {
	r.h.Close()
	r.raw.Close()
}

// dumpAttempts bounds retries of a dump that the kernel interrupted because
// the table changed under it.
const dumpAttempts = 5

// dumpTC returns the payloads (tcmsg and attributes) of a qdisc or filter
// dump of one link.
func (r *rtnl) dumpTC(msgType uint16, ifindex int, parent uint32) ([][]byte, error) {
	var resType uint16
	switch msgType {
	case unix.RTM_GETQDISC:
		resType = unix.RTM_NEWQDISC
	case unix.RTM_GETTFILTER:
		resType = unix.RTM_NEWTFILTER
	default:
		return nil, fmt.Errorf("dumpTC: unexpected message type %d", msgType)
	}
	var err error
	for attempt := 0; attempt < dumpAttempts; attempt++ {
		req := nl.NewNetlinkRequest(int(msgType), unix.NLM_F_DUMP)
		req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: r.raw}
		req.AddData(&nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: int32(ifindex), Parent: parent})
		var msgs [][]byte
		msgs, err = req.Execute(unix.NETLINK_ROUTE, resType)
		if err == nil {
			return msgs, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, err
}

// linkByName wraps the library's lookup so that a missing link matches
// ErrNoInterface.
func (r *rtnl) linkByName(name string) (netlink.Link, error) {
	l, err := r.h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil, fmt.Errorf("link %s: %w", name, ErrNoInterface)
	}
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	return l, nil
}

// vethPeer returns the name of the other end of the veth called name, which
// must be in the same namespace.
func (r *rtnl) vethPeer(name string) (string, error) {
	l, err := r.linkByName(name)
	if err != nil {
		return "", err
	}
	a := l.Attrs()
	if l.Type() != "veth" {
		return "", fmt.Errorf("%s is a %s, not a veth whose other end the DM holds: %w", name, l.Type(), ErrUnsupported)
	}
	// A veth reports its peer's index as its link (IFLA_LINK), with the
	// peer's namespace when that is another one.
	if a.ParentIndex == 0 || a.NetNsID >= 0 {
		return "", fmt.Errorf("the other end of veth %s is not in this namespace: %w", name, ErrUnsupported)
	}
	peer, err := r.h.LinkByIndex(a.ParentIndex)
	if err != nil {
		return "", fmt.Errorf("the other end of veth %s: %w", name, err)
	}
	return peer.Attrs().Name, nil
}
