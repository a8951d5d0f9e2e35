// Package afpacket is the distribution manager's packet I/O: an AF_PACKET
// socket bound to one interface that receives through a memory-mapped
// TPACKET_V3 ring and sends batches with sendmmsg, in pure Go on
// golang.org/x/sys/unix (no cgo).
//
// The shape is made for a forwarder that never copies a frame:
//
//	n, err := in.ReadBatch(ctx, views) // views point into in's ring
//	... classify views[:n], pick a prebuilt header per frame ...
//	out.WriteBatch(heads[:n], views[:n]) // header and frame gathered by the kernel
//	in.Release()                         // blocks go back to the kernel
//
// A batch of up to 256 frames costs one sendmmsg, plus one poll when the
// ring was empty; Release is a memory store per block. None of it
// allocates.
//
// VLAN tags: the kernel lifts an 802.1Q/802.1ad tag out of a received frame
// (into the ring's frame header) before a packet socket sees it, whether or
// not the device offloads tagging. ReadBatch puts the tag back, in place in
// the ring, so every frame is exactly as it was on the wire and the DM parses
// and forwards one format. The ring leaves room for the tag in front of each
// frame, so restoring one moves 12 bytes and copies nothing else.
//
// Fanout: several sockets opened with the same Config.Fanout id on one
// interface share its frames by a symmetric flow hash, one socket per
// worker. IPv4 fragments are reassembled before hashing
// (PACKET_FANOUT_FLAG_DEFRAG), so a fragmented datagram arrives as one frame
// that may be longer than the MTU.
//
// The ring is walked defensively: its descriptors are bounds-checked before
// use, and entries that cannot be handed out are skipped and counted by
// reason in Stats (Truncated, Malformed).
package afpacket
