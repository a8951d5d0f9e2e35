package sourceroute

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// NoticeReason is the reason octet of a drop notice (SOURCE-ROUTE.md,
// "Optional drop notice").
type NoticeReason uint8

const (
	NoticePolicyDeny NoticeReason = 1
	NoticeSignature  NoticeReason = 2 // malware / signature match
	NoticeMalformed  NoticeReason = 3
	NoticeOther      NoticeReason = 255
)

// String returns a stable snake_case label. Octets the spec does not define
// are reported as "unknown" rather than rejected, so that a newer appliance
// still gets its drops counted.
func (r NoticeReason) String() string {
	switch r {
	case NoticePolicyDeny:
		return "policy_deny"
	case NoticeSignature:
		return "signature"
	case NoticeMalformed:
		return "malformed"
	case NoticeOther:
		return "other"
	}
	return "unknown"
}

// MaxNoticedBytes bounds how much of the dropped frame a notice carries.
// 256 bytes always hold a full MSR header of up to 16 hops plus the inner
// Ethernet/IP/L4 headers, so the DM can still Parse the dropped frame and
// attribute it to a flow.
const MaxNoticedBytes = 256

// noticeHeaderLen is the Ethernet header plus the reason octet.
const noticeHeaderLen = EthernetHeaderLen + 1

// ErrBadNoticeReason is returned for the reason octet 0, which the spec
// leaves undefined and which would read as "no reason".
var ErrBadNoticeReason = errors.New("sourceroute: drop notice reason 0 is undefined")

// DropNotice is a parsed drop notice. Dropped aliases the parsed buffer.
type DropNotice struct {
	To, From MAC
	Why      NoticeReason
	Dropped  []byte
}

// BuildDropNotice writes a notice from a VSA (from) to the DM (to): Ethernet
// header with EtherType 0x88B6, the reason octet, then the first
// MaxNoticedBytes of the dropped frame. It returns the bytes written.
func BuildDropNotice(dst []byte, to, from MAC, why NoticeReason, dropped []byte) (int, error) {
	if !to.isUnicast() {
		return 0, fmt.Errorf("%w: notice destination %s", ErrBadHopAddress, to)
	}
	if !from.isUnicast() {
		return 0, fmt.Errorf("%w: notice source %s", ErrBadHopAddress, from)
	}
	if why == 0 {
		return 0, ErrBadNoticeReason
	}
	if len(dropped) > MaxNoticedBytes {
		dropped = dropped[:MaxNoticedBytes]
	}
	n := noticeHeaderLen + len(dropped)
	if len(dst) < n {
		return 0, fmt.Errorf("%w: notice needs %d bytes, have %d", ErrShortBuffer, n, len(dst))
	}
	copy(dst[0:6], to[:])
	copy(dst[6:12], from[:])
	binary.BigEndian.PutUint16(dst[12:14], DropNoticeEtherType)
	dst[14] = byte(why)
	copy(dst[noticeHeaderLen:], dropped)
	return n, nil
}

// ParseDropNotice validates a drop notice and returns a view of it. A frame
// shorter than the Ethernet header plus the reason octet is ReasonTruncated,
// a different EtherType ReasonEtherType, and a dropped part longer than
// MaxNoticedBytes (which a conforming sender never produces) ReasonTooBig.
// Reason octet 0 is accepted and labelled "unknown" so the drop is counted.
func ParseDropNotice(frame []byte) (DropNotice, Reason) {
	if len(frame) < noticeHeaderLen {
		return DropNotice{}, ReasonTruncated
	}
	if binary.BigEndian.Uint16(frame[12:14]) != DropNoticeEtherType {
		return DropNotice{}, ReasonEtherType
	}
	dropped := frame[noticeHeaderLen:]
	if len(dropped) > MaxNoticedBytes {
		return DropNotice{}, ReasonTooBig
	}
	return DropNotice{
		To:      MAC(frame[0:6]),
		From:    MAC(frame[6:12]),
		Why:     NoticeReason(frame[14]),
		Dropped: dropped,
	}, OK
}
