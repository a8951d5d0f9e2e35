package sourceroute

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

const hugePage = 2 << 20

// adviseHugePages asks the kernel to back the slot arrays with transparent
// huge pages where it allows them only on request ("madvise" mode): random
// lookups over a large table otherwise miss the TLB on nearly every packet.
// It is advice; failure changes nothing but speed.
func adviseHugePages(slots []slot) {
	if len(slots) == 0 {
		return
	}
	start := uintptr(unsafe.Pointer(&slots[0]))
	end := start + uintptr(len(slots))*slotBytes
	alignedStart := (start + hugePage - 1) &^ (hugePage - 1)
	alignedEnd := end &^ (hugePage - 1)
	if alignedEnd <= alignedStart {
		return
	}
	first := unsafe.Add(unsafe.Pointer(&slots[0]), alignedStart-start)
	region := unsafe.Slice((*byte)(first), alignedEnd-alignedStart)
	_ = unix.Madvise(region, unix.MADV_HUGEPAGE)
}
