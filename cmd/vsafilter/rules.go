package main

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
)

// action is a rule's decision.
type action uint8

const (
	actionAllow action = iota
	actionDeny
)

func (a action) String() string {
	if a == actionDeny {
		return "deny"
	}
	return "allow"
}

// anyProto and anyICMP mark criteria a rule does not constrain.
const (
	anyProto = -1
	anyICMP  = -1
)

// portRange is an inclusive range of ports.
type portRange struct{ lo, hi uint16 }

// hitCounter counts what a rule (or the default action, or a signature)
// decided: frames and their inner-frame bytes.
type hitCounter struct {
	hits  atomic.Uint64
	bytes atomic.Uint64
}

func (c *hitCounter) add(n int) {
	c.hits.Add(1)
	c.bytes.Add(uint64(n))
}

// rule is one compiled 5-tuple rule. A zero criterion (nil list, anyProto,
// anyICMP, etherType 0) matches everything.
type rule struct {
	name      string
	action    action
	etherType uint16 // 0: any
	proto     int    // IP protocol, or anyProto
	src, dst  []cidr
	sports    []portRange
	dports    []portRange
	icmpType  int // or anyICMP
	icmpCode  int // or anyICMP
	log       bool
	notify    bool
	counter   hitCounter
}

// needsIP reports whether the rule has criteria only IP packets can meet.
func (r *rule) needsIP() bool {
	return r.proto != anyProto || r.src != nil || r.dst != nil
}

// needsTransport reports whether the rule needs a transport header, which
// non-first fragments lack.
func (r *rule) needsTransport() bool {
	return r.sports != nil || r.dports != nil || r.icmpType != anyICMP || r.icmpCode != anyICMP
}

func (r *rule) matches(p *packet) bool {
	if r.etherType != 0 && r.etherType != p.etherType {
		return false
	}
	if p.ipVersion == 0 {
		return !r.needsIP() && !r.needsTransport()
	}
	if r.proto != anyProto && r.proto != int(p.proto) {
		return false
	}
	if r.src != nil && !cidrsContain(r.src, p.ipVersion, p.src) {
		return false
	}
	if r.dst != nil && !cidrsContain(r.dst, p.ipVersion, p.dst) {
		return false
	}
	if !r.needsTransport() {
		return true
	}
	if p.fragment {
		return false
	}
	if r.sports != nil && (!p.hasPorts || !portsContain(r.sports, p.sport)) {
		return false
	}
	if r.dports != nil && (!p.hasPorts || !portsContain(r.dports, p.dport)) {
		return false
	}
	if r.icmpType != anyICMP && (!p.hasICMP || int(p.icmpType) != r.icmpType) {
		return false
	}
	if r.icmpCode != anyICMP && (!p.hasICMP || int(p.icmpCode) != r.icmpCode) {
		return false
	}
	return true
}

// cidr is a compiled prefix: an address of either family matches if its
// words under the masks equal the prefix's.
type cidr struct {
	ipVersion uint8
	net, mask ipAddr
	prefix    netip.Prefix // as configured, for reports
}

func newCIDR(p netip.Prefix) cidr {
	a := p.Addr()
	var c cidr
	if a.Is4() {
		b := a.As4()
		c = cidr{ipVersion: 4, net: ipAddr{lo: uint64(binary.BigEndian.Uint32(b[:]))}}
		c.mask.lo = uint64(^uint32(0) &^ (^uint32(0) >> p.Bits()))
		if p.Bits() == 0 {
			c.mask.lo = 0
		}
	} else {
		b := a.As16()
		c = cidr{ipVersion: 6, net: ipAddr{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}}
		c.mask.hi = maskBits(min(p.Bits(), 64))
		c.mask.lo = maskBits(max(p.Bits()-64, 0))
	}
	c.prefix = p
	return c
}

// maskBits is a 64-bit mask with the top n bits set.
func maskBits(n int) uint64 {
	if n == 0 {
		return 0
	}
	return ^uint64(0) << (64 - n)
}

func (c *cidr) contains(ipVersion uint8, a ipAddr) bool {
	return c.ipVersion == ipVersion && a.hi&c.mask.hi == c.net.hi && a.lo&c.mask.lo == c.net.lo
}

func cidrsContain(cs []cidr, ipVersion uint8, a ipAddr) bool {
	for i := range cs {
		if cs[i].contains(ipVersion, a) {
			return true
		}
	}
	return false
}

func portsContain(rs []portRange, port uint16) bool {
	for _, r := range rs {
		if port >= r.lo && port <= r.hi {
			return true
		}
	}
	return false
}

// firstMatch returns the first rule that matches p, or nil.
func firstMatch(rules []*rule, p *packet) *rule {
	for _, r := range rules {
		if r.matches(p) {
			return r
		}
	}
	return nil
}
