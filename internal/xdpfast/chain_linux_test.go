//go:build linux

package xdpfast

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/internal/netnstest"
)

// chainVector is SOURCE-ROUTE.md's two-appliance walk of one frame.
type chainVector struct {
	Original   string `json:"original_frame"`
	ToVSA1     string `json:"dm_encapsulated_to_vsa1"`
	VSA1ToVSA2 string `json:"vsa1_forwarded_to_vsa2"`
	VSA2ToDM   string `json:"vsa2_forwarded_to_dm"`
	HeaderLen  int    `json:"header_length_bytes"`
}

type chainFrames struct {
	inner, toVSA1, toVSA2, toDM []byte
	hdrLen                      int
}

func loadChain(t testing.TB) chainFrames {
	t.Helper()
	raw, err := os.ReadFile("testdata/two-vsa-chain.json")
	if err != nil {
		t.Fatal(err)
	}
	var v chainVector
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	dec := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return chainFrames{dec(v.Original), dec(v.ToVSA1), dec(v.VSA1ToVSA2), dec(v.VSA2ToDM), v.HeaderLen}
}

// refEntry is what an entry tells the program, for the Go reference.
type refEntry struct {
	kind   uint32
	maxLen int
	hdr    []byte // push: the header pushed; return: the header expected
	inner  []byte // return: the inner frame's MACs
}

// reference is what the program must do with frame given entries: whether
// it redirects it, and the frame as it leaves. It states the semantics
// independently of the program's instructions.
func reference(entries map[Entry]refEntry, frame []byte) (redirect bool, out []byte) {
	return referenceAt(false, entries, frame)
}

// referenceAt is reference for the XDP program, or for the tc one if tc,
// which leaves stripping to userspace.
func referenceAt(tc bool, entries map[Entry]refEntry, frame []byte) (redirect bool, out []byte) {
	key, ok := KeyOf(1, frame)
	if !ok {
		return false, frame
	}
	e, ok := entries[key]
	if !ok {
		return false, frame
	}
	hdrLen := msrLen(frame)
	in := frame[hdrLen:]
	if in[ipProtoOff] == unix.IPPROTO_TCP && in[tcpFlagsOff]&tcpSynFinRst != 0 {
		return false, frame
	}
	if e.kind != kindDirect && len(frame) > e.maxLen {
		return false, frame
	}
	// The XDP program completes a checksum left to offload; an skb keeps
	// that state across a tc redirect.
	completed := func(frame []byte, innerOff int) []byte {
		if tc {
			return frame
		}
		return withCompletedChecksum(frame, innerOff)
	}
	switch e.kind {
	case kindDirect:
		return true, completed(frame, hdrLen)
	case kindPush:
		return true, completed(append(append([]byte(nil), e.hdr...), frame...), len(e.hdr))
	}
	if !bytes.Equal(frame[:hdrLen], e.hdr) || !bytes.Equal(in[:12], e.inner) {
		return false, frame
	}
	if e.kind == kindStrip {
		if tc {
			return false, frame
		}
		return true, completed(in, 0)
	}
	return true, completed(frame, hdrLen)
}

// chainEntries installs the vector's push, hop and strip entries in f, and
// returns them for the reference.
func chainEntries(t testing.TB, f *FastPath, c chainFrames, maxLen int) map[Entry]refEntry {
	t.Helper()
	entries := map[Entry]refEntry{}
	put := func(frame []byte, e refEntry) {
		key, ok := KeyOf(1, frame)
		if !ok {
			t.Fatalf("no key for %x", frame)
		}
		var val [valueLen]byte
		binary.NativeEndian.PutUint32(val[vOut:], 1)
		binary.NativeEndian.PutUint32(val[vKind:], e.kind)
		binary.NativeEndian.PutUint32(val[vMaxLen:], uint32(e.maxLen))
		binary.NativeEndian.PutUint32(val[vHdrLen:], uint32(len(e.hdr)))
		copy(val[vInner:], e.inner)
		copy(val[vHdr:], e.hdr)
		if err := f.flows.Put(key[:], val[:]); err != nil {
			t.Fatal(err)
		}
		entries[key] = e
	}
	put(c.inner, refEntry{kind: kindPush, maxLen: maxLen, hdr: c.toVSA1[:c.hdrLen]})
	put(c.toVSA2, refEntry{kind: kindHop, maxLen: maxLen + c.hdrLen, hdr: c.toVSA2[:c.hdrLen], inner: c.inner[:12]})
	put(c.toDM, refEntry{kind: kindStrip, maxLen: 1 << 16, hdr: c.toDM[:c.hdrLen], inner: c.inner[:12]})
	return entries
}

func clearMap(t testing.TB, f *FastPath) {
	t.Helper()
	var key Entry
	var val [valueLen]byte
	var keys []Entry
	for it := f.flows.Iterate(); it.Next(&key, &val); {
		keys = append(keys, key)
	}
	for _, k := range keys {
		if err := f.flows.Delete(k[:]); err != nil {
			t.Fatal(err)
		}
	}
}

// runOut runs the program on frame and returns its verdict and the frame
// as it leaves.
func runOut(t testing.TB, f *FastPath, frame []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(frame)+maxHdrLen+64)
	opts := &ebpf.RunOptions{Data: frame, DataOut: out, Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: 1}}
	ret, err := f.prog.Run(opts)
	if err != nil {
		t.Fatalf("run program: %v", err)
	}
	return ret, out[:len(opts.DataOut)]
}

// runTC runs the tc variant on frame; the test run's device is the
// loopback, ifindex 1, like runOut's.
func runTC(t testing.TB, f *FastPath, frame []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(frame)+maxHdrLen+64)
	opts := &ebpf.RunOptions{Data: frame, DataOut: out}
	ret, err := f.progTC.Run(opts)
	if err != nil {
		t.Fatalf("run program: %v", err)
	}
	return ret, out[:len(opts.DataOut)]
}

func edited(f []byte, fn func([]byte)) []byte {
	c := append([]byte(nil), f...)
	fn(c)
	return c
}

// TestProgramWalksTheChain runs the program in the kernel's test mode on
// SOURCE-ROUTE.md's two-appliance vector and on variations of each of its
// frames: it must push, switch and strip exactly as the vector says, byte
// for byte, agree with the Go reference on every case, and pass to
// userspace anything whose header or inner frame is not exactly the
// entry's.
func TestProgramWalksTheChain(t *testing.T) {
	f := loProgram(t)
	c := loadChain(t)
	const maxLen = 1500 + ethLen - 34
	entries := chainEntries(t, f, c, maxLen)
	defer clearMap(t, f)
	innerOff := c.hdrLen
	cases := []struct {
		name     string
		frame    []byte
		redirect bool
		want     []byte // the frame as it leaves, if redirected
	}{
		{"push", c.inner, true, c.toVSA1},
		{"switch to the next appliance", c.toVSA2, true, c.toVSA2},
		{"strip at the last hop", c.toDM, true, c.inner},
		{"push, padded", append(append([]byte(nil), c.inner...), make([]byte, 13)...), true,
			append(append([]byte(nil), c.toVSA1...), make([]byte, 13)...)},
		{"push, too big for the appliance link", append(append([]byte(nil), c.inner...), make([]byte, maxLen)...), false, nil},
		{"header sent to the first appliance comes back", c.toVSA1, false, nil},
		{"route entry changed", edited(c.toDM, func(b []byte) { b[16+6+5]++ }), false, nil},
		{"last route entry changed", edited(c.toDM, func(b []byte) { b[16+12+5]++ }), false, nil},
		{"other EtherType", edited(c.toDM, func(b []byte) { b[13]++ }), false, nil},
		{"drop notice type", edited(c.toDM, func(b []byte) { binary.BigEndian.PutUint16(b[12:], dropNoticeType) }), false, nil},
		{"next changed", edited(c.toDM, func(b []byte) { b[msrNextOff] = 1 }), false, nil},
		{"num zero", edited(c.toDM, func(b []byte) { b[msrNumOff] = 0 }), false, nil},
		{"num beyond MaxHops", edited(c.toDM, func(b []byte) { b[msrNumOff] = MaxHops + 1 }), false, nil},
		{"inner dst mac changed", edited(c.toDM, func(b []byte) { b[innerOff+5]++ }), false, nil},
		{"inner src mac changed", edited(c.toDM, func(b []byte) { b[innerOff+11]++ }), false, nil},
		{"inner port changed", edited(c.toDM, func(b []byte) { b[innerOff+l4Off+3]++ }), false, nil},
		{"inner tcp syn", edited(c.toDM, func(b []byte) { b[innerOff+ipProtoOff] = unix.IPPROTO_TCP }), false, nil},
		{"inner truncated", c.toDM[:len(c.toDM)-1], false, nil},
		{"outer src changed", edited(c.toDM, func(b []byte) { b[11]++ }), false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			refRedirect, refOut := reference(entries, tc.frame)
			verdict, out := runOut(t, f, tc.frame)
			if refRedirect != tc.redirect {
				t.Errorf("reference redirects = %v, want %v", refRedirect, tc.redirect)
			}
			if (verdict == xdpRedirect) != refRedirect || verdict != xdpRedirect && verdict != xdpPass {
				t.Fatalf("verdict %d, the reference redirects = %v", verdict, refRedirect)
			}
			if diff := cmp.Diff(refOut, out); diff != "" {
				t.Errorf("frame as it leaves, reference (-) vs program (+):\n%s", diff)
			}
			if tc.redirect {
				if diff := cmp.Diff(tc.want, out); diff != "" {
					t.Errorf("frame as it leaves, vector (-) vs program (+):\n%s", diff)
				}
			}
		})
	}
	// Every redirected frame was counted under its entry, with the inner
	// frame's length.
	var key Entry
	var val [valueLen]byte
	got := map[uint32][2]uint64{}
	for it := f.flows.Iterate(); it.Next(&key, &val); {
		got[binary.NativeEndian.Uint32(val[vKind:])] = [2]uint64{binary.NativeEndian.Uint64(val[vPackets:]), binary.NativeEndian.Uint64(val[vBytes:])}
	}
	n := uint64(len(c.inner))
	want := map[uint32][2]uint64{kindPush: {2, 2*n + 13}, kindHop: {1, n}, kindStrip: {1, n}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counters by kind (-want +got):\n%s", diff)
	}
}

// TestKeyOfMSR: the key of a returning frame tells hops and headers apart,
// and is never that of the bare inner frame.
func TestKeyOfMSR(t *testing.T) {
	c := loadChain(t)
	keys := map[Entry]string{}
	for name, fr := range map[string][]byte{"inner": c.inner, "to vsa1": c.toVSA1, "to vsa2": c.toVSA2, "to dm": c.toDM} {
		k, ok := KeyOf(1, fr)
		if !ok {
			t.Fatalf("%s: no key", name)
		}
		if other, dup := keys[k]; dup {
			t.Errorf("%s and %s share a key", name, other)
		}
		keys[k] = name
	}
	if _, ok := KeyOf(1, edited(c.toDM, func(b []byte) { binary.BigEndian.PutUint16(b[12:], dropNoticeType) })); ok {
		t.Error("a drop notice got a key")
	}
}

var fuzzChain struct {
	once    sync.Once
	f       *FastPath
	entries map[Entry]refEntry
}

// FuzzChainProgram: for any frame, with the vector's entries in the map,
// the program's verdict and output agree with the Go reference, and
// KeyOf never panics on MSR frames.
func FuzzChainProgram(f *testing.F) {
	c := loadChain(f)
	for _, fr := range [][]byte{c.inner, c.toVSA1, c.toVSA2, c.toDM} {
		f.Add(fr)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		KeyOf(1, frame)
		if os.Geteuid() != 0 || len(frame) < ethLen || len(frame) > 3000 {
			return
		}
		fuzzChain.once.Do(func() {
			fp, err := New(Config{MaxEntries: 8})
			if err != nil {
				skipWithoutXDP(t, err)
				t.Fatal(err)
			}
			fuzzChain.f, fuzzChain.entries = fp, chainEntries(t, fp, c, 1500)
		})
		fp := fuzzChain.f
		if fp == nil {
			return
		}
		refRedirect, refOut := reference(fuzzChain.entries, frame)
		verdict, out := runOut(t, fp, frame)
		if (verdict == xdpRedirect) != refRedirect {
			t.Fatalf("verdict %d, the reference redirects = %v", verdict, refRedirect)
		}
		if !bytes.Equal(out, refOut) {
			t.Fatalf("program sent %x, the reference %x", out, refOut)
		}
	})
}

// TestBarrier: the wait for in-flight program runs works on this kernel,
// and returns, with entries in the map and without.
func TestBarrier(t *testing.T) {
	f := loProgram(t)
	if err := f.Barrier(); err != nil {
		t.Fatal(err)
	}
	chainEntries(t, f, loadChain(t), 1500)
	defer clearMap(t, f)
	if verdict, _ := runOut(t, f, loadChain(t).inner); verdict != xdpRedirect {
		t.Fatalf("verdict %d before the barrier", verdict)
	}
	if err := f.Barrier(); err != nil {
		t.Fatal(err)
	}
}

const (
	tcActOK       = 0
	tcActRedirect = 7
)

// TestTCProgramWalksTheChain: the tc variant, for ports where native XDP
// cannot run, forwards and pushes exactly like the XDP program (checked
// against the same Go reference on the vector's frames and their
// variations), and leaves stripping to userspace.
func TestTCProgramWalksTheChain(t *testing.T) {
	f := loProgram(t)
	if f.progTC == nil {
		t.Skip("the kernel cannot load the tc variant")
	}
	c := loadChain(t)
	entries := chainEntries(t, f, c, 1500)
	defer clearMap(t, f)
	frames := map[string][]byte{"inner": c.inner, "to vsa1": c.toVSA1, "to vsa2": c.toVSA2, "to dm": c.toDM,
		"route changed": edited(c.toVSA2, func(b []byte) { b[16+5]++ }),
		"inner tcp syn": edited(c.inner, func(b []byte) { b[ipProtoOff] = unix.IPPROTO_TCP }),
		"too big":       append(append([]byte(nil), c.inner...), make([]byte, 1500)...),
	}
	want := map[string]bool{"inner": true, "to vsa2": true}
	for name, fr := range frames {
		t.Run(name, func(t *testing.T) {
			refRedirect, refOut := referenceAt(true, entries, fr)
			if refRedirect != want[name] {
				t.Errorf("reference redirects = %v, want %v", refRedirect, want[name])
			}
			verdict, out := runTC(t, f, fr)
			if wantVerdict := map[bool]uint32{true: tcActRedirect, false: tcActOK}[refRedirect]; verdict != wantVerdict {
				t.Fatalf("verdict %d, want %d", verdict, wantVerdict)
			}
			if diff := cmp.Diff(refOut, out); diff != "" {
				t.Errorf("frame as it leaves, reference (-) vs program (+):\n%s", diff)
			}
		})
	}
	if diff := cmp.Diff(c.toVSA1, func() []byte { _, out := runTC(t, f, c.inner); return out }()); diff != "" {
		t.Errorf("pushed frame, vector (-) vs tc program (+):\n%s", diff)
	}
}

// rawSocket is a packet socket on name in ns, closed when the test ends.
func rawSocket(t *testing.T, ns *netnstest.NS, name string) *packet.Conn {
	t.Helper()
	var c *packet.Conn
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// receiveFrom returns the next frame c receives whose source MAC is src,
// or nil after a few seconds.
func receiveFrom(t *testing.T, c *packet.Conn, src []byte) []byte {
	t.Helper()
	buf := make([]byte, 1<<16)
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return nil
		}
		if n >= 12 && bytes.Equal(buf[6:12], src) {
			return append([]byte(nil), buf[:n]...)
		}
	}
}

// redirectProgram is a tc program that sends every frame out of ifindex,
// as the tc-redirect intercept backend does with a guest's frames.
func redirectProgram(t *testing.T, ifindex int) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R1, int32(ifindex)),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestInterceptLinkTakesTheTCProgram: the DM's intercept link is a veth
// pair with a jumbo MTU, so native XDP is refused on the end the DM reads
// ("in"); the backend redirects guests' frames out of the other end
// ("feed"). The fast path puts its tc variant on the feed's egress: frames
// of an offloaded flow are forwarded (direct) or pushed to an appliance
// byte for byte, counted, and never reach the DM's end, where the engine's
// packet socket would take them a second time; frames of other flows still
// do.
func TestInterceptLinkTakesTheTCProgram(t *testing.T) {
	netnstest.RequireRoot(t)
	dm, guest, appl := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	for _, ns := range []*netnstest.NS{dm, guest, appl} {
		ns.QuietIPv6(t)
	}
	c := loadChain(t)
	innerSrc, innerDst := net.HardwareAddr(c.inner[6:12]), net.HardwareAddr(c.inner[0:6])
	netnstest.Veth(t, netnstest.End{NS: guest, Name: "eth0", MAC: innerSrc}, netnstest.End{NS: dm, Name: "tap", MTU: 1500})
	netnstest.Veth(t, netnstest.End{NS: dm, Name: "feed", MTU: 9000}, netnstest.End{NS: dm, Name: "in", MTU: 9000})
	netnstest.Veth(t, netnstest.End{NS: guest, Name: "eth1", MAC: innerDst}, netnstest.End{NS: dm, Name: "gb", MTU: 1500})
	netnstest.Veth(t, netnstest.End{NS: appl, Name: "eth0", MAC: net.HardwareAddr(c.toVSA1[0:6]), MTU: 1600},
		netnstest.End{NS: dm, Name: "ap", MTU: 1600})
	var feedIdx, tapIdx int
	if err := dm.Do(func() error {
		for name, idx := range map[string]*int{"feed": &feedIdx, "tap": &tapIdx} {
			ifi, err := net.InterfaceByName(name)
			if err != nil {
				return err
			}
			*idx = ifi.Index
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	redirect := redirectProgram(t, feedIdx)
	if err := dm.Do(func() error {
		l, err := link.AttachTCX(link.TCXOptions{Program: redirect, Interface: tapIdx, Attach: ebpf.AttachTCXIngress})
		if err == nil {
			t.Cleanup(func() { l.Close() })
		}
		return err
	}); err != nil {
		t.Skipf("no tcx on this kernel: %v", err)
	}

	f, err := New(Config{Do: dm.Do, MaxEntries: 16, Feeds: map[string]string{"in": "feed"}})
	if err != nil {
		skipWithoutXDP(t, err)
		t.Fatal(err)
	}
	defer f.Close()
	if f.progTC == nil {
		t.Skip("the kernel cannot load the tc variant")
	}
	send := rawSocket(t, guest, "eth0")
	atB, atAppl, atDM := rawSocket(t, guest, "eth1"), rawSocket(t, appl, "eth0"), rawSocket(t, dm, "in")
	sendFrame := func(fr []byte) {
		t.Helper()
		if _, err := send.WriteTo(fr, &packet.Addr{HardwareAddr: net.HardwareAddr(fr[0:6])}); err != nil {
			t.Fatal(err)
		}
	}
	// A frame of another flow, which the DM's end must still see.
	other := edited(c.inner, func(b []byte) { b[l4Off+1]++ })

	if _, tc, err := f.ingress("in"); err != nil || !tc {
		t.Fatalf("the intercept port did not get the tc variant: %v", err)
	}
	for _, tc := range []struct {
		name    string
		offload func() (Entry, bool, error)
		at      *packet.Conn
		from    []byte // the source MAC of the frame as it leaves
		want    []byte
	}{
		{"direct", func() (Entry, bool, error) { return f.Offload("in", "gb", c.inner, 1) }, atB, innerSrc, c.inner},
		{"push", func() (Entry, bool, error) {
			return f.OffloadPush("in", "ap", c.inner, c.toVSA1[:c.hdrLen], 1600+ethLen-c.hdrLen, 2)
		}, atAppl, c.toVSA1[6:12], c.toVSA1},
	} {
		entry, ok, err := tc.offload()
		if !ok || err != nil {
			t.Fatalf("%s: offload on the intercept port: ok %v, err %v", tc.name, ok, err)
		}
		sendFrame(c.inner)
		if got := receiveFrom(t, tc.at, tc.from); !bytes.Equal(got, tc.want) {
			t.Fatalf("%s: %x arrived, want %x", tc.name, got, tc.want)
		}
		sendFrame(other)
		if got := receiveFrom(t, atDM, innerSrc); !bytes.Equal(got, other) {
			t.Fatalf("%s: first frame at the DM's end: %x, want only the other flow's %x", tc.name, got, other)
		}
		if packets, _, err := f.Remove(entry); err != nil || packets != 1 {
			t.Fatalf("%s: entry counted %d frames (err %v), want 1", tc.name, packets, err)
		}
	}
	// The tc variant does not strip: a last-hop entry is refused there.
	if _, ok, err := f.OffloadReturn("in", "gb", c.toDM, true, 1<<16, 3); ok || err != nil {
		t.Errorf("strip entry on a tc port: ok %v, err %v; want refused quietly", ok, err)
	}
}

// TestTCProgramLeavesGSOToUserspace: a segmentation-offload skb (a tap's
// or veth's super-frame) is not pushed: segmenting it after the push would
// go wrong.
func TestTCProgramLeavesGSOToUserspace(t *testing.T) {
	f := loProgram(t)
	if f.progTC == nil {
		t.Skip("the kernel cannot load the tc variant")
	}
	c := loadChain(t)
	chainEntries(t, f, c, 1500)
	defer clearMap(t, f)
	var skb [192]byte // struct __sk_buff
	binary.NativeEndian.PutUint32(skb[skbGSOSize:], 1448)
	binary.NativeEndian.PutUint32(skb[skbGSOSize-12:], 2) // gso_segs
	out := make([]byte, len(c.inner)+maxHdrLen+64)
	opts := &ebpf.RunOptions{Data: c.inner, DataOut: out, Context: skb[:]}
	ret, err := f.progTC.Run(opts)
	if err != nil {
		t.Fatalf("run program: %v", err)
	}
	if ret != tcActOK || !bytes.Equal(opts.DataOut, c.inner) {
		t.Fatalf("verdict %d, frame %x; want TC_ACT_OK and the frame untouched", ret, opts.DataOut)
	}
}
