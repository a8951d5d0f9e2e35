package sourceroute

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants of SOURCE-ROUTE.md.
const (
	DefaultEtherType    uint16 = 0x88B5 // IEEE 802 Local Experimental 1
	DropNoticeEtherType uint16 = 0x88B6 // IEEE 802 Local Experimental 2
	DefaultMaxHops             = 16
	FixedHeaderLen             = 16 // dst, src, type, num, next
	EthernetHeaderLen          = 14
	hopLen                     = 6
	// maxWireHops is what the one-octet num field can express; a larger
	// Codec.MaxHops could never be reached.
	maxWireHops = 255
)

// HeaderLen is the MSR header length for a route of the given number of
// entries: 16 + 6·hops.
func HeaderLen(hops int) int { return FixedHeaderLen + hopLen*hops }

// Errors of BuildHeader and BuildDropNotice (control path: they describe bad
// configuration, so they are errors rather than per-frame Reasons).
var (
	ErrEmptyRoute     = errors.New("sourceroute: empty route")
	ErrRouteTooLong   = errors.New("sourceroute: route longer than MaxHops")
	ErrBadHopAddress  = errors.New("sourceroute: hop address is multicast, broadcast or zero")
	ErrRouteNotToSelf = errors.New("sourceroute: last route entry is not the sender (the DM)")
	ErrShortBuffer    = errors.New("sourceroute: destination buffer too small")
	ErrBadCodec       = errors.New("sourceroute: invalid codec configuration")
)

// Codec holds the per-host parameters of the header. The zero Codec is usable
// and means the defaults (EtherType 0x88B5, MaxHops 16): a zero field never
// silently disables a check. MaxHops above 255 is capped at 255, the most the
// num octet can carry; a negative MaxHops is treated as the default. Use
// NewCodec to have a bad configuration reported instead of corrected.
type Codec struct {
	EtherType uint16
	MaxHops   int
}

// DefaultCodec returns the codec of SOURCE-ROUTE.md with its defaults.
func DefaultCodec() Codec { return Codec{EtherType: DefaultEtherType, MaxHops: DefaultMaxHops} }

// NewCodec validates a configured EtherType and MaxHops. The EtherType must
// be an EtherType (≥ 0x0600, otherwise it is an 802.3 length) and not the
// drop-notice type; MaxHops must be 1..255.
func NewCodec(etherType uint16, maxHops int) (Codec, error) {
	if etherType < 0x0600 {
		return Codec{}, fmt.Errorf("%w: EtherType %#04x is an 802.3 length, not an EtherType", ErrBadCodec, etherType)
	}
	if etherType == DropNoticeEtherType {
		return Codec{}, fmt.Errorf("%w: EtherType %#04x is reserved for drop notices", ErrBadCodec, etherType)
	}
	if maxHops < 1 || maxHops > maxWireHops {
		return Codec{}, fmt.Errorf("%w: MaxHops %d outside 1..%d", ErrBadCodec, maxHops, maxWireHops)
	}
	return Codec{EtherType: etherType, MaxHops: maxHops}, nil
}

func (c Codec) etherType() uint16 {
	if c.EtherType == 0 {
		return DefaultEtherType
	}
	return c.EtherType
}

func (c Codec) maxHops() int {
	switch {
	case c.MaxHops <= 0:
		return DefaultMaxHops
	case c.MaxHops > maxWireHops:
		return maxWireHops
	}
	return c.MaxHops
}

// Frame is a zero-copy view of a validated MSR frame. It aliases the buffer
// given to Parse: Advance rewrites that buffer, and the view stays valid as
// long as the buffer is not reused. The zero Frame is empty and every codec
// operation rejects it.
type Frame struct {
	b []byte
	// n is the hop count as validated by Parse. Keeping it here, not
	// re-reading b[14], means a later change of the num octet in the buffer
	// can never move Hop/Inner/Advance outside the validated bounds.
	n int
}

// Parse validates frame in place against every rule of SOURCE-ROUTE.md, in
// the spec's order, and returns a view of it. On a non-OK Reason the Frame is
// the zero Frame.
func (c Codec) Parse(frame []byte) (Frame, Reason) {
	if len(frame) < FixedHeaderLen {
		return Frame{}, ReasonTruncated
	}
	if binary.BigEndian.Uint16(frame[12:14]) != c.etherType() {
		return Frame{}, ReasonEtherType
	}
	n, next := int(frame[14]), int(frame[15])
	if n == 0 || n > c.maxHops() {
		return Frame{}, ReasonHopCount
	}
	if next >= n {
		return Frame{}, ReasonNextOutOfRange
	}
	hdr := HeaderLen(n)
	if len(frame) < hdr {
		return Frame{}, ReasonShortRoute
	}
	if len(frame) < hdr+EthernetHeaderLen {
		return Frame{}, ReasonNoInnerFrame
	}
	if !sameMAC(frame[0:6], frame[hopOffset(next):]) {
		return Frame{}, ReasonDstMismatch
	}
	for off := FixedHeaderLen; off < hdr; off += hopLen {
		if !isUnicastBytes(frame[off : off+hopLen]) {
			return Frame{}, ReasonBadHopAddress
		}
	}
	return Frame{b: frame, n: n}, OK
}

func hopOffset(i int) int { return FixedHeaderLen + hopLen*i }

// sameMAC compares the first six bytes of a and b as two loads, not a loop.
func sameMAC(a, b []byte) bool {
	_, _ = a[5], b[5]
	return binary.BigEndian.Uint32(a) == binary.BigEndian.Uint32(b) &&
		binary.BigEndian.Uint16(a[4:]) == binary.BigEndian.Uint16(b[4:])
}

func isUnicastBytes(m []byte) bool {
	_ = m[5]
	return m[0]&1 == 0 && (binary.BigEndian.Uint32(m) != 0 || binary.BigEndian.Uint16(m[4:]) != 0)
}

// Dst is the current hop's MAC (equal to Hop(Next()) after Parse and Advance).
func (f Frame) Dst() MAC { return MAC(f.b[0:6]) }

// Src is the MAC of whoever sent this hop.
func (f Frame) Src() MAC { return MAC(f.b[6:12]) }

// Num is N, the number of route entries.
func (f Frame) Num() int { return f.n }

// Next is the index of the current hop in the route.
func (f Frame) Next() int { return int(f.b[15]) }

// Hop returns route[i]; it panics if i is not in 0..Num()-1, like a slice index.
func (f Frame) Hop(i int) MAC {
	if uint(i) >= uint(f.n) {
		panic(fmt.Sprintf("sourceroute: hop index %d out of range [0,%d)", i, f.n))
	}
	return MAC(f.b[hopOffset(i):])
}

// LastHop is route[N-1], the DM that built the route and the destination of
// drop notices.
func (f Frame) LastHop() MAC { return f.Hop(f.n - 1) }

// HeaderLen is 16 + 6·N.
func (f Frame) HeaderLen() int {
	if f.b == nil {
		return 0
	}
	return HeaderLen(f.n)
}

// Inner is the original Ethernet frame (a sub-slice of the parsed buffer).
func (f Frame) Inner() []byte {
	if f.b == nil {
		return nil
	}
	return f.b[HeaderLen(f.n):]
}

// Bytes is the whole MSR frame as given to Parse.
func (f Frame) Bytes() []byte { return f.b }

// AtLastHop reports whether the frame is addressed to its final entry.
func (f Frame) AtLastHop() bool { return f.b != nil && f.Next() == f.n-1 }

// BuildHeader writes a flow's header into dst: dst MAC = route[0], src =
// self (the DM), next = 0, followed by the route, whose last entry must be
// self. It is meant to run once per flow; Encapsulate then prepends the
// result to every packet. It returns the number of bytes written.
func (c Codec) BuildHeader(dst []byte, self MAC, route []MAC) (int, error) {
	switch {
	case len(route) == 0:
		return 0, ErrEmptyRoute
	case len(route) > c.maxHops():
		return 0, fmt.Errorf("%w: %d entries, MaxHops %d", ErrRouteTooLong, len(route), c.maxHops())
	}
	for i, hop := range route {
		if !hop.isUnicast() {
			return 0, fmt.Errorf("%w: route[%d] = %s", ErrBadHopAddress, i, hop)
		}
	}
	if route[len(route)-1] != self {
		return 0, fmt.Errorf("%w: route ends at %s, sender is %s", ErrRouteNotToSelf, route[len(route)-1], self)
	}
	n := HeaderLen(len(route))
	if len(dst) < n {
		return 0, fmt.Errorf("%w: header needs %d bytes, have %d", ErrShortBuffer, n, len(dst))
	}
	copy(dst[0:6], route[0][:])
	copy(dst[6:12], self[:])
	binary.BigEndian.PutUint16(dst[12:14], c.etherType())
	dst[14] = byte(len(route))
	dst[15] = 0
	for i, hop := range route {
		copy(dst[hopOffset(i):], hop[:])
	}
	return n, nil
}

// Encapsulate copies header and then inner into dst and returns the frame
// length. It never truncates: if dst (sized by the caller to the link MTU)
// cannot hold both it returns ReasonTooBig, and an inner frame without an
// Ethernet header is ReasonNoInnerFrame. The header is trusted to come from
// BuildHeader.
func Encapsulate(dst, header, inner []byte) (int, Reason) {
	if len(inner) < EthernetHeaderLen {
		return 0, ReasonNoInnerFrame
	}
	n := len(header) + len(inner)
	if len(dst) < n {
		return 0, ReasonTooBig
	}
	copy(dst, header)
	copy(dst[len(header):], inner)
	return n, OK
}

// Advance is a VSA's forwarding step, done in place on a parsed frame
// addressed to self: next++, dst = route[next], src = self. A frame whose
// current hop is the last entry may not be forwarded (ReasonPastLastHop);
// one not addressed to self is not this VSA's to forward (ReasonDstMismatch).
// f shares its buffer with the caller, so the change is visible through f
// and every copy of it.
func (c Codec) Advance(f Frame, self MAC) Reason {
	b := f.b
	if len(b) < FixedHeaderLen || f.n == 0 || len(b) < HeaderLen(f.n) {
		return ReasonTruncated
	}
	next := int(b[15])
	if next >= f.n {
		return ReasonNextOutOfRange
	}
	if !sameMAC(b[0:6], self[:]) {
		return ReasonDstMismatch
	}
	if next+1 == f.n {
		return ReasonPastLastHop
	}
	next++
	b[15] = byte(next)
	// Two loads and four stores instead of two memmove calls: this is the
	// whole per-packet cost of a VSA hop.
	hop := b[hopOffset(next) : hopOffset(next)+hopLen]
	binary.LittleEndian.PutUint32(b[0:4], binary.LittleEndian.Uint32(hop))
	binary.LittleEndian.PutUint16(b[4:6], binary.LittleEndian.Uint16(hop[4:]))
	binary.LittleEndian.PutUint32(b[6:10], binary.LittleEndian.Uint32(self[0:4]))
	binary.LittleEndian.PutUint16(b[10:12], binary.LittleEndian.Uint16(self[4:6]))
	return OK
}

// Strip is the DM's last hop: the frame must be addressed to self, be at its
// last entry, and that entry must be self. It returns the inner frame, a
// sub-slice of the parsed buffer; otherwise ReasonNotLastHop.
func (c Codec) Strip(f Frame, self MAC) ([]byte, Reason) {
	b := f.b
	if len(b) < FixedHeaderLen || f.n == 0 || len(b) < HeaderLen(f.n)+EthernetHeaderLen {
		return nil, ReasonTruncated
	}
	last := f.n - 1
	if int(b[15]) != last || !sameMAC(b[0:6], self[:]) || !sameMAC(b[hopOffset(last):], self[:]) {
		return nil, ReasonNotLastHop
	}
	return b[HeaderLen(f.n):], OK
}
