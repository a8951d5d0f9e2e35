package netnstest

import (
	"bytes"
	"context"
	"net"
	"os"
	"testing"
	"time"
)

func TestVethBetweenNamespaces(t *testing.T) {
	a, b := New(t), New(t)
	a.AddBridge(t, "br0")
	macA := net.HardwareAddr{0x02, 0, 0, 0, 0xaa, 1}
	macB := net.HardwareAddr{0x02, 0, 0, 0, 0xbb, 1}
	Veth(t, End{NS: a, Name: "va", MAC: macA, MTU: 1600, Master: "br0"}, End{NS: b, Name: "vb", MAC: macB, MTU: 1600})

	if got := a.MAC(t, "va"); !bytes.Equal(got, macA) {
		t.Errorf("MAC of va = %v, want %v", got, macA)
	}
	if got := b.MAC(t, "vb"); !bytes.Equal(got, macB) {
		t.Errorf("MAC of vb = %v, want %v", got, macB)
	}
	if _, err := b.Netlink().LinkByName("va"); err == nil {
		t.Errorf("va is visible in the peer's namespace")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := b.Exec(ctx, "ip", "-o", "link", "show", "vb")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("mtu 1600")) || !bytes.Contains(out, []byte("state UP")) {
		t.Errorf("ip link show vb in %s = %q, want mtu 1600 and state UP", b.Name(), out)
	}
	out, err = a.Exec(ctx, "ip", "-o", "link", "show", "master", "br0")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("va@")) {
		t.Errorf("bridge br0 ports = %q, want va", out)
	}
}

func TestDoRunsInsideAndRestores(t *testing.T) {
	n := New(t)
	self, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var inside string
	if err := n.Do(func() error {
		var err error
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if inside == self {
		t.Errorf("Do ran in the caller's namespace %s", self)
	}
	if err := n.Sysctl("net.ipv6.conf.all.disable_ipv6", "1"); err != nil {
		t.Fatal(err)
	}
	var v []byte
	if err := n.Do(func() error {
		v, err = os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if string(bytes.TrimSpace(v)) != "1" {
		t.Errorf("disable_ipv6 inside = %q, want 1", v)
	}
}
