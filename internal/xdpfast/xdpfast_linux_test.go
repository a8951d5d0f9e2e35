//go:build linux

package xdpfast

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/xdpgen"
)

const xdpRedirect = 4

var (
	macA = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xa1}
	macB = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xb1}
)

// udp is an IPv4/UDP frame from a to b; tcp the same with TCP and flags.
func udp(size int) []byte { return xdpgen.UDPFrame(macB, macA, size) }

func tcp(flags byte) []byte {
	f := udp(60)
	f[ipProtoOff] = unix.IPPROTO_TCP
	f[tcpFlagsOff] = flags
	return f
}

func edit(f []byte, fn func([]byte)) []byte { fn(f); return f }

// icmp is an ICMP message of type typ from a to b, identifier 0x1234.
func icmp(typ byte, size int) []byte {
	f := udp(size)
	f[ipProtoOff] = unix.IPPROTO_ICMP
	clear(f[l4Off : l4Off+8])
	f[l4Off] = typ
	binary.BigEndian.PutUint16(f[l4Off+4:], 0x1234)
	binary.BigEndian.PutUint16(f[l4Off+6:], 7) // sequence
	return f
}

// frameCases are frames with whether the program forwards them once their
// entry is in the map.
var frameCases = []struct {
	name    string
	frame   []byte
	keyed   bool // KeyOf gives a key
	forward bool // the program forwards it
}{
	{"udp 60", udp(60), true, true},
	{"udp 1514", udp(1514), true, true},
	{"tcp ack", tcp(0x10), true, true},
	{"tcp syn", tcp(0x02), true, false},
	{"tcp fin", tcp(0x11), true, false},
	{"tcp rst", tcp(0x04), true, false},
	{"tcp truncated", tcp(0x10)[:minTCPFrame-1], false, false},
	{"icmp echo request", icmp(icmpEcho, 60), true, true},
	{"icmp echo reply", icmp(icmpEchoReply, 98), true, true},
	{"icmp unreachable", icmp(3, 70), false, false},
	{"icmp timestamp", icmp(13, 60), false, false},
	{"icmp echo cut short by the ip total", edit(icmp(icmpEcho, 60), func(f []byte) { binary.BigEndian.PutUint16(f[ipLenOff:], minICMPTotal-1) }), false, false},
	{"icmp echo at the ip total", edit(icmp(icmpEcho, 60), func(f []byte) { binary.BigEndian.PutUint16(f[ipLenOff:], minICMPTotal) }), true, true},
	{"ip options", edit(udp(60), func(f []byte) { f[ethLen] = 0x46 }), false, false},
	{"first fragment", edit(udp(60), func(f []byte) { f[ipFragOff] = 0x20 }), false, false},
	{"later fragment", edit(udp(60), func(f []byte) { f[ipFragOff+1] = 0x01 }), false, false},
	{"don't fragment", edit(udp(60), func(f []byte) { f[ipFragOff] = 0x40 }), true, true},
	{"vlan tagged", edit(udp(60), func(f []byte) { binary.BigEndian.PutUint16(f[12:], unix.ETH_P_8021Q) }), false, false},
	{"ipv6", edit(udp(60), func(f []byte) { binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IPV6) }), false, false},
	{"short", udp(60)[:minUDPFrame-1], false, false},
	{"ip total below the ports", edit(udp(60), func(f []byte) { binary.BigEndian.PutUint16(f[ipLenOff:], 22) }), false, false},
	{"ip total beyond the frame", edit(udp(60), func(f []byte) { binary.BigEndian.PutUint16(f[ipLenOff:], 47) }), false, false},
	{"ip total at the frame's end", edit(udp(60), func(f []byte) { binary.BigEndian.PutUint16(f[ipLenOff:], 46) }), true, true},
	{"ethernet padding", edit(udp(60), func(f []byte) { binary.BigEndian.PutUint16(f[ipLenOff:], 28) }), true, true},
}

// loProgram loads a FastPath and checks that BPF_PROG_RUN can run it on
// the loopback device, the only device every namespace has.
func loProgram(t testing.TB) *FastPath {
	t.Helper()
	netnstest.RequireRoot(t)
	f, err := New(Config{MaxEntries: 64})
	if err != nil {
		skipWithoutXDP(t, err)
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// skipWithoutXDP skips the test if New failed with err because the kernel
// cannot run XDP at all; a kernel that loads XDP programs but rejects the
// fast path's is a failure, not a reason to skip.
func skipWithoutXDP(t testing.TB, err error) {
	t.Helper()
	if !errors.Is(err, ErrUnsupported) {
		return
	}
	pass, perr := xdpgen.PassProgram()
	if perr != nil {
		t.Skipf("kernel cannot load XDP programs (%v): %v", perr, err)
	}
	pass.Close()
	t.Fatalf("the kernel loads XDP programs but not the fast path's: %v", err)
}

// run runs the program once on frame as if it arrived on ifindex 1.
func run(t testing.TB, f *FastPath, frame []byte) uint32 {
	t.Helper()
	ret, err := f.prog.Run(&ebpf.RunOptions{Data: frame, Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: 1}})
	if err != nil {
		t.Fatalf("run program: %v", err)
	}
	return ret
}

type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// TestProgramAgreesWithKeyOf runs the program in the kernel's test mode on
// every case: with the entry KeyOf builds in the map it must redirect
// exactly the frames it should, and count them; without the entry it must
// pass everything.
func TestProgramAgreesWithKeyOf(t *testing.T) {
	f := loProgram(t)
	for _, tc := range frameCases {
		t.Run(tc.name, func(t *testing.T) {
			key, ok := KeyOf(1, tc.frame)
			if ok != tc.keyed {
				t.Fatalf("KeyOf ok = %v, want %v", ok, tc.keyed)
			}
			if got := run(t, f, tc.frame); got != xdpPass {
				t.Fatalf("without an entry: verdict %d, want XDP_PASS", got)
			}
			if !ok {
				// Any entry at all must not make the program forward it.
				key, _ = KeyOf(1, udp(60))
			}
			var val [valueLen]byte
			binary.NativeEndian.PutUint32(val[vOut:], 1)
			if err := f.flows.Put(key[:], val[:]); err != nil {
				t.Fatal(err)
			}
			defer f.flows.Delete(key[:])
			want := uint32(xdpPass)
			if tc.forward {
				want = xdpRedirect
			}
			if got := run(t, f, tc.frame); got != want {
				t.Fatalf("with the entry: verdict %d, want %d", got, want)
			}
			packets, bytes, err := f.Remove(key)
			if err != nil {
				t.Fatal(err)
			}
			wantPackets, wantBytes := uint64(0), uint64(0)
			if tc.forward {
				wantPackets, wantBytes = 1, uint64(len(tc.frame))
			}
			if packets != wantPackets || bytes != wantBytes {
				t.Errorf("counted %d frames, %d bytes; want %d, %d", packets, bytes, wantPackets, wantBytes)
			}
		})
	}
}

// TestKeyOfSeparatesFlows: every field of the key tells flows apart.
func TestKeyOfSeparatesFlows(t *testing.T) {
	base, _ := KeyOf(7, udp(60))
	for name, change := range map[string]func([]byte){
		"dst mac":  func(f []byte) { f[5]++ },
		"src mac":  func(f []byte) { f[11]++ },
		"saddr":    func(f []byte) { f[ipSaddrOff+3]++ },
		"daddr":    func(f []byte) { f[ipDaddrOff+3]++ },
		"sport":    func(f []byte) { f[l4Off+1]++ },
		"dport":    func(f []byte) { f[l4Off+3]++ },
		"protocol": func(f []byte) { f[ipProtoOff] = unix.IPPROTO_TCP },
	} {
		k, ok := KeyOf(7, edit(udp(60), change))
		if !ok || k == base {
			t.Errorf("%s: key %x, ok %v; want a key other than %x", name, k, ok, base)
		}
	}
	if k, _ := KeyOf(8, udp(60)); k == base {
		t.Error("the arrival port does not change the key")
	}
	// ICMP echo: type and identifier tell flows apart; the checksum and
	// the sequence number, which change from frame to frame, do not.
	echo, _ := KeyOf(7, icmp(icmpEcho, 60))
	for name, tc := range map[string]struct {
		change func([]byte)
		same   bool
	}{
		"type":       {func(f []byte) { f[l4Off] = icmpEchoReply }, false},
		"identifier": {func(f []byte) { f[l4Off+5]++ }, false},
		"checksum":   {func(f []byte) { f[l4Off+2]++ }, true},
		"sequence":   {func(f []byte) { f[l4Off+7]++ }, true},
	} {
		if k, ok := KeyOf(7, edit(icmp(icmpEcho, 60), tc.change)); !ok || (k == echo) != tc.same {
			t.Errorf("icmp %s: key %x, ok %v; same key as before = %v, want %v", name, k, ok, k == echo, tc.same)
		}
	}
}

var fuzzProg struct {
	once sync.Once
	f    *FastPath
}

// FuzzKeyOf: KeyOf never panics, keys only frames the program can parse,
// and (as root) the program forwards a frame under KeyOf's entry exactly
// when KeyOf keys it and it is not a TCP SYN, FIN or RST.
func FuzzKeyOf(f *testing.F) {
	for _, tc := range frameCases {
		f.Add(tc.frame)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		key, ok := KeyOf(1, frame)
		if ok && len(frame) < minUDPFrame {
			t.Fatalf("keyed a %d-byte frame", len(frame))
		}
		if os.Geteuid() != 0 || len(frame) < ethLen || len(frame) > 3000 {
			return
		}
		fuzzProg.once.Do(func() { fuzzProg.f, _ = New(Config{MaxEntries: 4}) })
		fp := fuzzProg.f
		if fp == nil {
			return
		}
		if !ok {
			if got := run(t, fp, frame); got != xdpPass {
				t.Fatalf("unkeyed frame got verdict %d", got)
			}
			return
		}
		var val [valueLen]byte
		if err := fp.flows.Put(key[:], val[:]); err != nil {
			t.Fatal(err)
		}
		defer fp.flows.Delete(key[:])
		// The flags that send a frame up are the inner frame's, behind the
		// MSR header when there is one.
		in := frame[msrLen(frame):]
		want := uint32(xdpRedirect)
		if in[ipProtoOff] == unix.IPPROTO_TCP && in[tcpFlagsOff]&tcpSynFinRst != 0 {
			want = xdpPass
		}
		if got := run(t, fp, frame); got != want {
			t.Fatalf("verdict %d, want %d", got, want)
		}
	})
}

// TestOffloadRefusesPortsThatCannotTakePart: a veth with a jumbo MTU
// cannot run native XDP, and a veth whose peer runs no XDP cannot take
// redirected frames; in both cases Offload says so and adds nothing, and
// once the peer has a program the same ports work.
func TestOffloadRefusesPortsThatCannotTakePart(t *testing.T) {
	netnstest.RequireRoot(t)
	dm, guest := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, netnstest.End{NS: guest, Name: "eth0", MAC: macA}, netnstest.End{NS: dm, Name: "ga", MTU: 1500})
	netnstest.Veth(t, netnstest.End{NS: guest, Name: "eth1", MAC: macB}, netnstest.End{NS: dm, Name: "gb", MTU: 1500})
	netnstest.Veth(t, netnstest.End{NS: guest, Name: "eth9", MTU: 9000}, netnstest.End{NS: dm, Name: "jumbo", MTU: 9000})
	f, err := New(Config{Do: dm.Do, MaxEntries: 16})
	if err != nil {
		skipWithoutXDP(t, err)
		t.Fatal(err)
	}
	defer f.Close()
	frame := udp(60)
	if _, ok, err := f.Offload("jumbo", "gb", frame, 1); ok || !errors.Is(err, ErrIngress) {
		t.Errorf("jumbo ingress: ok %v, err %v; want ErrIngress", ok, err)
	}
	if _, ok, err := f.Offload("ga", "gb", frame, 1); ok || !errors.Is(err, ErrEgress) {
		t.Errorf("egress without XDP on the peer: ok %v, err %v; want ErrEgress", ok, err)
	}
	if n, _ := f.Len(); n != 0 {
		t.Errorf("%d entries after refusals", n)
	}
	pass, err := xdpgen.PassProgram()
	if err != nil {
		t.Fatal(err)
	}
	defer pass.Close()
	if err := guest.Do(func() error {
		l, err := netlink.LinkByName("eth1")
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFd(l, pass.FD())
	}); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.ports["gb"].checked = f.ports["gb"].checked.Add(-egressRecheck) // the next offer checks again
	f.mu.Unlock()
	entry, ok, err := f.Offload("ga", "gb", frame, 1)
	if !ok || err != nil {
		t.Fatalf("with XDP on the peer: ok %v, err %v", ok, err)
	}
	if n, _ := f.Len(); n != 1 {
		t.Errorf("%d entries, want 1", n)
	}
	if _, _, err := f.Remove(entry); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.Remove(entry); err != nil {
		t.Errorf("removing twice: %v", err)
	}
}

// TestVisitSeesEveryEntry: the batched walk reports each entry once, with
// its cookie and counters, over several batches.
func TestVisitSeesEveryEntry(t *testing.T) {
	netnstest.RequireRoot(t)
	const n = 2*visitBatch + 17
	f, err := New(Config{MaxEntries: n})
	if err != nil {
		skipWithoutXDP(t, err)
		t.Fatal(err)
	}
	defer f.Close()
	for i := range n {
		var key Entry
		binary.NativeEndian.PutUint32(key[kIfindex:], uint32(i+1))
		var val [valueLen]byte
		binary.NativeEndian.PutUint64(val[vCookie:], uint64(i))
		binary.NativeEndian.PutUint64(val[vPackets:], uint64(2*i))
		binary.NativeEndian.PutUint64(val[vBytes:], uint64(3*i))
		if err := f.flows.Put(key[:], val[:]); err != nil {
			t.Fatal(err)
		}
	}
	seen := make([]int, n)
	if err := f.Visit(func(cookie, packets, bytes uint64) {
		if cookie >= n || packets != 2*cookie || bytes != 3*cookie {
			t.Errorf("entry %d: %d packets, %d bytes", cookie, packets, bytes)
			return
		}
		seen[cookie]++
	}); err != nil {
		t.Fatal(err)
	}
	for i, c := range seen {
		if c != 1 {
			t.Fatalf("entry %d seen %d times", i, c)
		}
	}
}
