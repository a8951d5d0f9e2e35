package intercept

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// LinkDump is the canonical text of everything about one link that a
// diversion may change: the link's attributes, its qdiscs and the filters
// (with their actions) on them. Two dumps are equal when the wiring is;
// counters, timestamps, reference counts and carrier flags are left out, and
// so are the interface index and qdisc handles the kernel picked itself, so
// that a macvtap that libvirt re-created compares equal to the one it
// replaced.
type LinkDump struct {
	Link    string
	Qdiscs  []string
	Filters []string
}

func (d LinkDump) String() string {
	var b strings.Builder
	b.WriteString(d.Link)
	b.WriteByte('\n')
	for _, q := range d.Qdiscs {
		b.WriteString(q)
		b.WriteByte('\n')
	}
	for _, f := range d.Filters {
		b.WriteString(f)
		b.WriteByte('\n')
	}
	return b.String()
}

// DumpLink dumps the link called name in the network namespace whose file is
// at netNS ("" for the caller's own).
func DumpLink(ctx context.Context, netNS, name string) (LinkDump, error) {
	if err := ctx.Err(); err != nil {
		return LinkDump{}, fmt.Errorf("intercept: dump %s: %w", name, err)
	}
	r, err := openRTNL(netNS)
	if err != nil {
		return LinkDump{}, fmt.Errorf("intercept: dump %s: %w", name, err)
	}
	defer r.Close()
	d, err := r.dumpLink(name)
	if err != nil {
		return LinkDump{}, fmt.Errorf("intercept: dump %s: %w", name, err)
	}
	return d, nil
}

func (r *rtnl) dumpLink(name string) (LinkDump, error) {
	link, err := r.linkByName(name)
	if err != nil {
		return LinkDump{}, err
	}
	d := LinkDump{Link: r.describeLink(link)}
	qdiscs, err := r.qdiscs(link.Attrs().Index)
	if err != nil {
		return LinkDump{}, err
	}
	for _, q := range qdiscs {
		d.Qdiscs = append(d.Qdiscs, q.render(r.ifname))
		for _, parent := range q.filterParents() {
			filters, err := r.filters(link.Attrs().Index, parent)
			if err != nil {
				return LinkDump{}, err
			}
			for _, f := range filters {
				d.Filters = append(d.Filters, f.render(r.ifname))
			}
		}
	}
	return d, nil
}

// Flags that follow the carrier rather than configuration.
const carrierFlags = unix.IFF_RUNNING | unix.IFF_LOWER_UP | unix.IFF_DORMANT

func (r *rtnl) describeLink(l netlink.Link) string {
	a := l.Attrs()
	var b strings.Builder
	fmt.Fprintf(&b, "link %s type %s mtu %d txqlen %d hwaddr %s flags %#x promisc %d",
		a.Name, l.Type(), a.MTU, a.TxQLen, a.HardwareAddr, a.RawFlags&^carrierFlags, a.Promisc)
	if a.MasterIndex != 0 {
		fmt.Fprintf(&b, " master %s", r.ifname(a.MasterIndex))
	}
	switch l := l.(type) {
	case *netlink.Macvtap:
		fmt.Fprintf(&b, " mode %s parent %s", macvlanModeName(l.Mode), r.ifname(a.ParentIndex))
	case *netlink.Macvlan:
		fmt.Fprintf(&b, " mode %s parent %s", macvlanModeName(l.Mode), r.ifname(a.ParentIndex))
	case *netlink.Tuntap:
		fmt.Fprintf(&b, " tuntap %s flags %#x owner %d group %d", l.Mode, uint16(l.Flags), l.Owner, l.Group)
	}
	return b.String()
}

// ifname names an interface index for dumps; an index that is not a link of
// this namespace (a veth peer elsewhere) stays a number.
func (r *rtnl) ifname(index int) string {
	if index == 0 {
		return "-"
	}
	l, err := r.h.LinkByIndex(index)
	if err != nil {
		return fmt.Sprintf("if%d", index)
	}
	return l.Attrs().Name
}

var macvlanModes = map[netlink.MacvlanMode]string{
	netlink.MACVLAN_MODE_DEFAULT:  "default",
	netlink.MACVLAN_MODE_PRIVATE:  "private",
	netlink.MACVLAN_MODE_VEPA:     "vepa",
	netlink.MACVLAN_MODE_BRIDGE:   "bridge",
	netlink.MACVLAN_MODE_PASSTHRU: "passthrough",
	netlink.MACVLAN_MODE_SOURCE:   "source",
}

func macvlanModeName(m netlink.MacvlanMode) string {
	if s, ok := macvlanModes[m]; ok {
		return s
	}
	return fmt.Sprintf("mode%d", m)
}

// tcObject is one qdisc or filter as the kernel dumps it.
type tcObject struct {
	ifindex int32
	handle  uint32
	parent  uint32
	// info is a filter's priority and protocol; for a qdisc it holds a
	// reference count and is ignored.
	info  uint32
	kind  string
	chain *uint32
	// attrs are the remaining top-level attributes except statistics.
	attrs   []syscall.NetlinkRouteAttr
	options []byte
	isQdisc bool
}

var errShortMessage = errors.New("truncated tc message")

// parseTC decodes a tcmsg and its attributes. It never panics on malformed
// input: dumps come from the kernel, but the parser is fuzzed anyway.
func parseTC(b []byte, isQdisc bool) (tcObject, error) {
	if len(b) < nl.SizeofTcMsg {
		return tcObject{}, errShortMessage
	}
	ne := nl.NativeEndian()
	o := tcObject{
		ifindex: int32(ne.Uint32(b[4:8])),
		handle:  ne.Uint32(b[8:12]),
		parent:  ne.Uint32(b[12:16]),
		info:    ne.Uint32(b[16:20]),
		isQdisc: isQdisc,
	}
	attrs, err := parseAttrs(b[nl.SizeofTcMsg:])
	if err != nil {
		return tcObject{}, fmt.Errorf("tc attributes: %w", err)
	}
	for _, a := range attrs {
		switch a.Attr.Type {
		case nl.TCA_KIND:
			o.kind = cString(a.Value)
		case nl.TCA_OPTIONS:
			o.options = a.Value
		case nl.TCA_CHAIN:
			if len(a.Value) >= 4 {
				c := ne.Uint32(a.Value)
				o.chain = &c
			}
		case nl.TCA_STATS, nl.TCA_XSTATS, nl.TCA_STATS2, nl.TCA_PAD, nl.TCA_FCNT:
			// Counters, and padding that only aligns them.
		default:
			o.attrs = append(o.attrs, a)
		}
	}
	return o, nil
}

// parseAttrs splits netlink attributes. The library's parser slices past the
// end of a buffer whose last attribute lacks its padding; this one accepts
// the missing padding and rejects anything else that does not fit.
func parseAttrs(b []byte) ([]syscall.NetlinkRouteAttr, error) {
	const hdr = unix.SizeofRtAttr
	ne := nl.NativeEndian()
	var out []syscall.NetlinkRouteAttr
	for len(b) >= hdr {
		n := int(ne.Uint16(b))
		if n < hdr || n > len(b) {
			return nil, fmt.Errorf("attribute of length %d in %d bytes: %w", n, len(b), errShortMessage)
		}
		out = append(out, syscall.NetlinkRouteAttr{
			// Nested-attribute and byte-order flags share the type field.
			Attr:  syscall.RtAttr{Len: uint16(n), Type: ne.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)},
			Value: b[hdr:n],
		})
		next := (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if next > len(b) {
			next = len(b)
		}
		b = b[next:]
	}
	return out, nil
}

func cString(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func (r *rtnl) qdiscs(ifindex int) ([]tcObject, error) {
	msgs, err := r.dumpTC(unix.RTM_GETQDISC, ifindex, 0)
	if err != nil {
		return nil, fmt.Errorf("dump qdiscs: %w", err)
	}
	var out []tcObject
	for _, m := range msgs {
		o, err := parseTC(m, true)
		if err != nil {
			return nil, fmt.Errorf("dump qdiscs: %w", err)
		}
		// Older kernels ignore the index of a qdisc dump request.
		if int(o.ifindex) == ifindex {
			out = append(out, o)
		}
	}
	return out, nil
}

func (r *rtnl) filters(ifindex int, parent uint32) ([]tcObject, error) {
	msgs, err := r.dumpTC(unix.RTM_GETTFILTER, ifindex, parent)
	if err != nil {
		return nil, fmt.Errorf("dump filters of %s: %w", handleString(parent), err)
	}
	var out []tcObject
	for _, m := range msgs {
		o, err := parseTC(m, false)
		if err != nil {
			return nil, fmt.Errorf("dump filters of %s: %w", handleString(parent), err)
		}
		out = append(out, o)
	}
	return out, nil
}

// filterParents are the parents to dump a qdisc's filters with: clsact has
// two blocks, ingress one; a handle of 0 (noqueue, the children of mq)
// cannot carry filters. Filters attached to classes are not dumped.
func (o tcObject) filterParents() []uint32 {
	switch {
	case o.parent == netlink.HANDLE_INGRESS && o.kind == "clsact":
		return []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS}
	case o.handle == 0:
		return nil
	}
	return []uint32{o.handle}
}

func (o tcObject) render(ifname func(int) string) string {
	var b strings.Builder
	if o.isQdisc {
		fmt.Fprintf(&b, "qdisc %s handle %s parent %s", o.kind, qdiscHandleString(o.handle), handleString(o.parent))
	} else {
		prio, proto := o.info>>16, nl.Swap16(uint16(o.info))
		fmt.Fprintf(&b, "filter parent %s prio %d proto %#04x kind %s handle %s", handleString(o.parent), prio, proto, o.kind, filterHandleString(o.kind, o.handle))
	}
	if o.chain != nil {
		fmt.Fprintf(&b, " chain %d", *o.chain)
	}
	for _, a := range o.attrs {
		fmt.Fprintf(&b, " attr%d=%s", a.Attr.Type, hex.EncodeToString(a.Value))
	}
	if o.options != nil {
		b.WriteString(" options{")
		b.WriteString(renderOptions(o.kind, o.isQdisc, o.options, ifname))
		b.WriteString("}")
	}
	return b.String()
}

func handleString(h uint32) string {
	switch h {
	case netlink.HANDLE_ROOT:
		return "root"
	}
	return fmt.Sprintf("%x:%x", h>>16, h&0xffff)
}

// qdiscHandleString hides handles the kernel numbered itself (majors from
// 8000: upwards, given to default qdiscs of new devices), which differ for a
// device that was re-created with the same configuration.
func qdiscHandleString(h uint32) string {
	// ffff: is the ingress slot, never allocated.
	if major := h >> 16; major >= 0x8000 && major < 0xffff && h&0xffff == 0 {
		return "auto"
	}
	return handleString(h)
}

// filterHandleString spells u32 handles the way tc does: hash table, bucket
// and node.
func filterHandleString(kind string, h uint32) string {
	if kind == "u32" {
		return fmt.Sprintf("%x:%x:%x", h>>20, (h>>12)&0xff, h&0xfff)
	}
	return fmt.Sprintf("%#x", h)
}

func renderOptions(kind string, isQdisc bool, b []byte, ifname func(int) string) string {
	if isQdisc || kind != "u32" {
		return hex.EncodeToString(b)
	}
	attrs, err := parseAttrs(b)
	if err != nil {
		return "malformed:" + hex.EncodeToString(b)
	}
	ne := nl.NativeEndian()
	var parts []string
	for _, a := range attrs {
		switch a.Attr.Type {
		case nl.TCA_U32_PCNT:
			// Per-key hit counters.
		case nl.TCA_U32_MARK:
			// struct tc_u32_mark: val, mask, and a hit counter to leave out.
			if len(a.Value) >= 8 {
				parts = append(parts, fmt.Sprintf("mark=%#x/%#x", ne.Uint32(a.Value), ne.Uint32(a.Value[4:])))
			} else {
				parts = append(parts, "mark="+hex.EncodeToString(a.Value))
			}
		case nl.TCA_U32_ACT:
			parts = append(parts, "act["+renderActions(a.Value, ifname)+"]")
		case nl.TCA_U32_POLICE:
			parts = append(parts, "police{"+renderNested(a.Value, policeVolatile)+"}")
		case nl.TCA_U32_CLASSID:
			parts = append(parts, "classid="+u32Attr(a.Value, handleString))
		case nl.TCA_U32_SEL:
			parts = append(parts, "sel="+hex.EncodeToString(a.Value))
		case nl.TCA_U32_DIVISOR:
			parts = append(parts, "divisor="+u32Attr(a.Value, func(v uint32) string { return fmt.Sprint(v) }))
		case nl.TCA_U32_HASH:
			parts = append(parts, "hash="+u32Attr(a.Value, func(v uint32) string { return filterHandleString("u32", v) }))
		case nl.TCA_U32_LINK:
			parts = append(parts, "link="+u32Attr(a.Value, func(v uint32) string { return filterHandleString("u32", v) }))
		case nl.TCA_U32_INDEV:
			parts = append(parts, "indev="+cString(a.Value))
		default:
			parts = append(parts, fmt.Sprintf("attr%d=%s", a.Attr.Type, hex.EncodeToString(a.Value)))
		}
	}
	return strings.Join(parts, " ")
}

func u32Attr(v []byte, format func(uint32) string) string {
	if len(v) < 4 {
		return "short:" + hex.EncodeToString(v)
	}
	return format(nl.NativeEndian().Uint32(v))
}

// Attribute types inside an action's options that carry timestamps: 1 for
// every action kind (TCA_<KIND>_TM) except police, whose TM is 6 and PAD 7.
var (
	actionVolatile = map[uint16]bool{1: true}
	policeVolatile = map[uint16]bool{6: true, 7: true}
)

// renderActions renders a TCA_*_ACT nest: one nested attribute per action,
// in the order they run.
func renderActions(b []byte, ifname func(int) string) string {
	acts, err := parseAttrs(b)
	if err != nil {
		return "malformed:" + hex.EncodeToString(b)
	}
	var out []string
	for _, act := range acts {
		out = append(out, fmt.Sprintf("%d:%s", act.Attr.Type, renderAction(act.Value, ifname)))
	}
	return strings.Join(out, " ")
}

func renderAction(b []byte, ifname func(int) string) string {
	attrs, err := parseAttrs(b)
	if err != nil {
		return "malformed:" + hex.EncodeToString(b)
	}
	kind := ""
	for _, a := range attrs {
		if a.Attr.Type == nl.TCA_ACT_KIND {
			kind = cString(a.Value)
		}
	}
	var parts []string
	for _, a := range attrs {
		switch a.Attr.Type {
		case nl.TCA_ACT_KIND:
			parts = append(parts, kind)
		case nl.TCA_ACT_STATS, nl.TCA_ACT_PAD:
		case nl.TCA_ACT_INDEX:
			parts = append(parts, "index="+u32Attr(a.Value, func(v uint32) string { return fmt.Sprint(v) }))
		case nl.TCA_ACT_OPTIONS:
			switch kind {
			case "mirred":
				parts = append(parts, renderMirred(a.Value, ifname))
			case "police":
				parts = append(parts, "{"+renderNested(a.Value, policeVolatile)+"}")
			default:
				parts = append(parts, "{"+renderNested(a.Value, actionVolatile)+"}")
			}
		default:
			parts = append(parts, fmt.Sprintf("attr%d=%s", a.Attr.Type, hex.EncodeToString(a.Value)))
		}
	}
	return strings.Join(parts, " ")
}

// tc_mirred: tc_gen (index, capab, action, refcnt, bindcnt) then eaction and
// ifindex, all 32-bit.
const mirredParmsLen = 7 * 4

const (
	tcaMirredTM     = 1
	tcaMirredParms  = 2
	tcaMirredPad    = 3
	tcaEgressRedir  = 1
	tcaEgressMirror = 2
	tcaIngressRedir = 3
	tcaIngressMirr  = 4
)

var mirredKinds = map[uint32]string{
	tcaEgressRedir:  "egress-redirect",
	tcaEgressMirror: "egress-mirror",
	tcaIngressRedir: "ingress-redirect",
	tcaIngressMirr:  "ingress-mirror",
}

func renderMirred(b []byte, ifname func(int) string) string {
	attrs, err := parseAttrs(b)
	if err != nil {
		return "malformed:" + hex.EncodeToString(b)
	}
	var parts []string
	for _, a := range attrs {
		switch a.Attr.Type {
		case tcaMirredTM, tcaMirredPad:
		case tcaMirredParms:
			if len(a.Value) < mirredParmsLen {
				parts = append(parts, "parms=short:"+hex.EncodeToString(a.Value))
				continue
			}
			p := parseMirredParms(a.Value)
			eaction, ok := mirredKinds[p.eaction]
			if !ok {
				eaction = fmt.Sprintf("eaction%d", p.eaction)
			}
			parts = append(parts, fmt.Sprintf("index=%d capab=%d action=%s refcnt=%d bindcnt=%d %s dev %s",
				p.index, p.capab, netlink.TcAct(p.action), p.refcnt, p.bindcnt, eaction, ifname(int(p.ifindex))))
		default:
			parts = append(parts, fmt.Sprintf("attr%d=%s", a.Attr.Type, hex.EncodeToString(a.Value)))
		}
	}
	return "{" + strings.Join(parts, " ") + "}"
}

type mirredParms struct {
	index, capab     uint32
	action           int32
	refcnt, bindcnt  int32
	eaction, ifindex uint32
}

func parseMirredParms(v []byte) mirredParms {
	ne := nl.NativeEndian()
	u := func(i int) uint32 { return ne.Uint32(v[4*i:]) }
	return mirredParms{
		index: u(0), capab: u(1), action: int32(u(2)), refcnt: int32(u(3)), bindcnt: int32(u(4)),
		eaction: u(5), ifindex: u(6),
	}
}

// renderNested renders attributes one level deep, skipping the volatile
// types; nested values stay hex.
func renderNested(b []byte, volatile map[uint16]bool) string {
	attrs, err := parseAttrs(b)
	if err != nil {
		return "malformed:" + hex.EncodeToString(b)
	}
	var parts []string
	for _, a := range attrs {
		if volatile[a.Attr.Type] {
			continue
		}
		parts = append(parts, fmt.Sprintf("attr%d=%s", a.Attr.Type, hex.EncodeToString(a.Value)))
	}
	return strings.Join(parts, " ")
}
