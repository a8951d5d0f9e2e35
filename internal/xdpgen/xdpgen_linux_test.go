//go:build linux

package xdpgen

import (
	"context"
	"encoding/binary"
	"errors"
	"maps"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vsagent/vsagent/internal/afpacket"
	"github.com/vsagent/vsagent/internal/netnstest"
)

func TestNewRejectsBadConfig(t *testing.T) {
	frame := UDPFrame(nil, nil, 60)
	for name, cfg := range map[string]Config{
		"short frame":      {Frame: make([]byte, 13)},
		"huge frame":       {Frame: make([]byte, 4000)},
		"flows not pow2":   {Frame: frame, FieldOffset: UDPPortOffset, Flows: 1000},
		"field past end":   {Frame: frame, FieldOffset: 59, Flows: 4},
		"negative offset":  {Frame: frame, FieldOffset: -1, Flows: 4},
		"values overflow":  {Frame: frame, FieldOffset: UDPPortOffset, First: 65535, Flows: 2},
		"32-bit overflow":  {Frame: frame, FieldOffset: UDPPortOffset, FieldSize: 4, First: 1<<32 - 1, Flows: 2},
		"field size 3":     {Frame: frame, FieldOffset: UDPPortOffset, FieldSize: 3, Flows: 2},
		"4 bytes past end": {Frame: frame, FieldOffset: 57, FieldSize: 4, Flows: 2},
	} {
		t.Run(name, func(t *testing.T) {
			g, err := New(cfg)
			if !errors.Is(err, ErrInvalidConfig) {
				if g != nil {
					g.Close()
				}
				t.Fatalf("New: %v, want ErrInvalidConfig", err)
			}
		})
	}
}

// TestGeneratorSendsFlowsOverVeth sends frames from one namespace over a
// veth and checks what arrives on the other end: every frame is the
// template but for its source port, which takes values of the configured
// range only, and more than one of them.
func TestGeneratorSendsFlowsOverVeth(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, tc := range []struct {
		name               string
		size               int
		first, flows, want uint32 // want: distinct values to see at least
	}{
		{"source port", 2, 20000, 64, 2},
		// A million flows over both ports: values beyond 16 bits arrive.
		{"both ports", 4, 40000 << 16, 1 << 20, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) { testGeneratorFlows(t, tc.size, tc.first, tc.flows, tc.want) })
	}
}

func testGeneratorFlows(t *testing.T, size int, first, flows, wantValues uint32) {
	a, b := netnstest.New(t), netnstest.New(t)
	a.QuietIPv6(t)
	b.QuietIPv6(t)
	macA, macB := net.HardwareAddr{2, 0, 0, 0, 0xa, 1}, net.HardwareAddr{2, 0, 0, 0, 0xb, 1}
	netnstest.Veth(t, netnstest.End{NS: a, Name: "ga", MAC: macA}, netnstest.End{NS: b, Name: "gb", MAC: macB})

	pass, err := PassProgram()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pass.Close() })
	if err := b.Do(func() error {
		l, err := netlink.LinkByName("gb")
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFd(l, pass.FD())
	}); err != nil {
		t.Fatalf("attach XDP to the receiving end: %v", err)
	}
	var rx *afpacket.Socket
	if err := b.Do(func() error {
		rx, err = afpacket.Open(afpacket.Config{Iface: "gb", RxOnly: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close() })

	frame := UDPFrame(macB, macA, 60)
	g, err := New(Config{Frame: frame, FieldOffset: UDPPortOffset, FieldSize: size, First: first, Flows: int(flows)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	ifindex := a.Netlink()
	la, err := ifindex.LinkByName("ga")
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	genCtx, stopGen := context.WithCancel(ctx)
	genErr := make(chan error, 1)
	go func() { genErr <- a.Do(func() error { return g.Run(genCtx, la.Attrs().Index) }) }()

	const want = 2000
	ports := map[uint32]int{}
	views := make([][]byte, 64)
	got := 0
	for got < want {
		n, err := rx.ReadBatch(ctx, views)
		if err != nil {
			stopGen()
			t.Fatalf("received %d of %d frames: %v (generator sent %d)", got, want, err, must(g.Sent()))
		}
		for _, v := range views[:n] {
			if len(v) != len(frame) {
				t.Fatalf("frame of %d bytes, want %d", len(v), len(frame))
			}
			value := uint32(binary.BigEndian.Uint16(v[UDPPortOffset:]))
			if size == 4 {
				value = binary.BigEndian.Uint32(v[UDPPortOffset:])
			}
			if value < first || value >= first+flows {
				t.Fatalf("field value %#x outside [%#x, %#x)", value, first, first+flows)
			}
			ports[value]++
			// Everything but the field is the template.
			w := append([]byte(nil), frame...)
			if size == 4 {
				binary.BigEndian.PutUint32(w[UDPPortOffset:], value)
			} else {
				binary.BigEndian.PutUint16(w[UDPPortOffset:], uint16(value))
			}
			if string(v) != string(w) {
				t.Fatalf("frame %x differs from the template %x beyond the field", v, w)
			}
		}
		got += n
		rx.Release()
	}
	stopGen()
	if err := <-genErr; err != nil {
		t.Fatal(err)
	}
	sent := must(g.Sent())
	if sent < uint64(got) {
		t.Errorf("generator counted %d frames, %d arrived", sent, got)
	}
	if len(ports) < int(wantValues) {
		t.Errorf("%d frames had %d distinct values, want at least %d", got, len(ports), wantValues)
	}
	if size == 4 && !slices.ContainsFunc(slices.Collect(maps.Keys(ports)), func(v uint32) bool { return v&0xfff0000 != first&0xfff0000 }) {
		t.Errorf("no value differs from %#x above its low 16 bits", first)
	}
	t.Logf("%d frames sent, %d read, %d distinct values", sent, got, len(ports))
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
