// Package xdpgen is a packet generator for benchmarks that must offer more
// frames than the forwarder under test can move.
//
// Generators that build an skb per frame (write, sendmmsg, a TX ring) top
// out below the kernel bridge on a virtual machine, so they cannot saturate
// a forwarder. This one runs a tiny XDP program with BPF_PROG_RUN in "live
// frames" mode (BPF_F_TEST_XDP_LIVE_FRAMES): the kernel recycles page-pool
// frames holding a template, the program rewrites a 16-bit field per frame
// (a UDP source port, so the frames belong to many flows) and returns
// XDP_TX, which transmits the frame out of the chosen interface with no skb
// and no copy from user space. On a veth the receiving end needs an XDP
// program attached (see PassProgram), or the frames are dropped.
//
// The programs are assembled in Go, so no C compiler is needed.
package xdpgen
