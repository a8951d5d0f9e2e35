package netnsutil_test

import (
	"net"
	"os/exec"
	"testing"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/netnsutil"
)

func TestDoSeesTheOtherNamespace(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t)
	name := netnstest.UniqueName("nsu")
	if out, err := exec.Command("ip", "-n", ns.Name(), "link", "add", name, "type", "veth", "peer", "name", name+"p").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v\n%s", err, out)
	}
	var inside, outside bool
	if err := netnsutil.Do("/var/run/netns/"+ns.Name(), func() error {
		_, err := net.InterfaceByName(name)
		inside = err == nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err := net.InterfaceByName(name)
	outside = err == nil
	if !inside || outside {
		t.Fatalf("link %s visible inside=%v (want true), outside=%v (want false)", name, inside, outside)
	}
	if err := netnsutil.Do("/var/run/netns/does-not-exist", func() error { return nil }); err == nil {
		t.Fatal("Do in a missing namespace succeeded")
	}
}
