//go:build linux

package xdpfast

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
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
	switch e.kind {
	case kindDirect:
		return true, frame
	case kindPush:
		return true, append(append([]byte(nil), e.hdr...), frame...)
	}
	if !bytes.Equal(frame[:hdrLen], e.hdr) || !bytes.Equal(in[:12], e.inner) {
		return false, frame
	}
	if e.kind == kindStrip {
		return true, in
	}
	return true, frame
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
				return
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
