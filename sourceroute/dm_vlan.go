package sourceroute

import "encoding/binary"

// Guest interfaces behind a VLAN trunk.
//
// Where a NIC's switch separates guests by port VLAN (SR-IOV in legacy/VEB
// mode), the DM shares one port with all of them and tells them apart by
// tag: GuestInterface.VLAN is the 802.1Q tag that the interface's frames
// carry on its Port, in both directions. The DM pops the tag of a frame it
// receives, so appliances, flow keys and counters see the frame exactly as
// the guest sent it, and pushes the destination interface's tag when it
// delivers one. Only that outermost 802.1Q tag is the port's: a tag the
// guest put on its frame itself is part of the frame, kept and keyed as on
// any other port. Frames to the uplink leave untagged (the intercept VLANs
// are local to the host's NIC and must not reach the wire).

// MaxVLAN is the highest VLAN ID a guest interface may carry (4095 is
// reserved by 802.1Q).
const MaxVLAN = 4094

// vlanTagLen is the size of an 802.1Q tag: TPID and TCI.
const vlanTagLen = 4

// taggedHeadLen is the part of a tagged frame in front of its EtherType.
const taggedHeadLen = 12 + vlanTagLen

// vlanSet is the VLANs of a port's guest interfaces, one bit per VLAN ID,
// so that a frame's tag is checked without a map lookup.
type vlanSet [(MaxVLAN + 1 + 63) / 64]uint64

func (s *vlanSet) add(vid uint16)      { s[vid/64] |= 1 << (vid % 64) }
func (s *vlanSet) has(vid uint16) bool { return s[vid/64]&(1<<(vid%64)) != 0 }

// tagHeads is a transmit queue's room for the tagged heads of the frames it
// holds: a frame is queued as its tagged head and the rest of the frame, so
// pushing a tag copies 12 bytes and allocates nothing.
type tagHeads [][taggedHeadLen]byte

// validateVLAN checks a guest interface's VLAN. Interfaces with the same
// Port and VLAN are told apart by MAC, which is unique anyway.
func validateVLAN(p *problems, who string, gi GuestInterface) {
	switch {
	case gi.VLAN == 0:
	case gi.VLAN > MaxVLAN:
		p.addf("%s: VLAN %d outside 1..%d", who, gi.VLAN, MaxVLAN)
	case gi.Dedicated:
		p.addf("%s: a dedicated port carries one interface's frames untagged, not VLAN %d", who, gi.VLAN)
	}
}

// fillVLANRoles gives every port that carries tagged guest interfaces the
// set of their VLANs, and the role of a trunk if it has no other.
func fillVLANRoles(ns *state) {
	for _, g := range ns.guests {
		for _, ep := range g.ifaces {
			if ep.port == nil || ep.vlan == 0 {
				continue
			}
			role := &ns.rx[ep.port.idx]
			if role.kind == rxNone {
				role.kind = rxTrunk
			}
			if role.vlans == nil {
				role.vlans = &vlanSet{}
			}
			role.vlans.add(ep.vlan)
		}
	}
}

// fromTagged handles a frame that carries, as its outer 802.1Q tag, the
// VLAN of a guest interface of the port it arrived on: it pops the tag in
// place and hands the frame on as that interface's. It reports false for
// any other frame, which the port's role then handles.
func (w *worker) fromTagged(st *state, vlans *vlanSet, frame []byte, now int64) bool {
	if len(frame) < taggedHeadLen+2 || binary.BigEndian.Uint16(frame[12:14]) != etherTypeVLAN {
		return false
	}
	vid := binary.BigEndian.Uint16(frame[14:16]) & 0x0fff
	if !vlans.has(vid) {
		return false
	}
	copy(frame[vlanTagLen:taggedHeadLen], frame[:12])
	frame = frame[vlanTagLen:]
	src := st.ifaceByMAC[macKey(frame[6:12])]
	switch {
	case src == nil:
		w.drop(nil, DropUnknownSource)
	case src.port != w.port || src.vlan != vid:
		w.drop(src.guest, DropSpoofedSource)
	default:
		w.fromGuest(st, src, frame, now)
	}
	return true
}

// fromTrunk handles a frame on a port that only carries tagged guest
// interfaces, and that fromTagged did not take: untagged, or with a VLAN
// of no guest interface there (another VF's port VLAN, the wire's own).
func (w *worker) fromTrunk(frame []byte) {
	if len(frame) < EthernetHeaderLen {
		w.unparsable(nil, KeyTruncatedEthernet)
		return
	}
	w.drop(nil, DropForeignVLAN)
}

// queueTagged queues frame for port p with VLAN tag vid pushed after its
// MAC addresses (none for vid 0).
func (w *worker) queueTagged(p *openPort, vid uint16, frame []byte) {
	if vid == 0 {
		w.queue(p, nil, frame)
		return
	}
	q := &w.tx[p.idx]
	head := &q.tags[len(q.bodies)]
	copy(head[:12], frame[:12])
	binary.BigEndian.PutUint16(head[12:14], etherTypeVLAN)
	binary.BigEndian.PutUint16(head[14:16], vid)
	w.queue(p, head[:], frame[12:])
}
