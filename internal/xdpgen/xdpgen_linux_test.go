//go:build linux

package xdpgen

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vsagent/vsagent/internal/afpacket"
	"github.com/vsagent/vsagent/internal/netnstest"
)

func TestNewRejectsBadConfig(t *testing.T) {
	frame := UDPFrame(nil, nil, 60)
	for name, cfg := range map[string]Config{
		"short frame":     {Frame: make([]byte, 13)},
		"huge frame":      {Frame: make([]byte, 4000)},
		"flows not pow2":  {Frame: frame, FieldOffset: UDPPortOffset, Flows: 1000},
		"field past end":  {Frame: frame, FieldOffset: 59, Flows: 4},
		"negative offset": {Frame: frame, FieldOffset: -1, Flows: 4},
		"values overflow": {Frame: frame, FieldOffset: UDPPortOffset, First: 65535, Flows: 2},
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

	const first, flows = 20000, 64
	frame := UDPFrame(macB, macA, 60)
	g, err := New(Config{Frame: frame, FieldOffset: UDPPortOffset, First: first, Flows: flows})
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
	ports := map[uint16]int{}
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
			port := binary.BigEndian.Uint16(v[UDPPortOffset:])
			if port < first || port >= first+flows {
				t.Fatalf("source port %d outside [%d, %d)", port, first, first+flows)
			}
			ports[port]++
			// Everything but the port is the template.
			w := append([]byte(nil), frame...)
			binary.BigEndian.PutUint16(w[UDPPortOffset:], port)
			if string(v) != string(w) {
				t.Fatalf("frame %x differs from the template %x beyond the port", v, w)
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
	if len(ports) < 2 {
		t.Errorf("all %d frames had one source port: %v", got, ports)
	}
	t.Logf("%d frames sent, %d read, %d distinct ports", sent, got, len(ports))
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
