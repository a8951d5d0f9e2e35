package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/sourceroute"
)

// buildVsafilter builds this command as a static binary, the way an
// appliance image carries it.
func buildVsafilter(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "vsafilter")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// outputLine is any JSON line vsafilter prints.
type outputLine struct {
	Type        string         `json:"type"`
	Promiscuous bool           `json:"promiscuous"`
	Reason      string         `json:"reason"`
	Self        string         `json:"self"`
	Appliance   applianceStats `json:"appliance"`
	Filter      filterStats    `json:"filter"`
}

// syncBuffer is a bytes.Buffer safe for a process writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// vsafilterProc is a vsafilter process running in a namespace.
type vsafilterProc struct {
	ready  outputLine
	name   string
	cmd    *exec.Cmd
	lines  chan outputLine
	stderr *syncBuffer
	waited chan error
}

// startVsafilter runs bin in ns with args, and with config written to a
// file for -c unless config is empty, and waits for its ready line.
func startVsafilter(t *testing.T, ctx context.Context, ns *netnstest.NS, bin, name, config string, args ...string) *vsafilterProc {
	t.Helper()
	if config != "" {
		path := filepath.Join(t.TempDir(), name+".toml")
		if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"-c", path}, args...)
	}
	p := &vsafilterProc{name: name, lines: make(chan outputLine, 64), stderr: &syncBuffer{}, waited: make(chan error, 1)}
	p.cmd = ns.Command(ctx, bin, args...)
	p.cmd.Stderr = p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l outputLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				l = outputLine{Type: "unparsable: " + sc.Text()}
			}
			p.lines <- l
		}
		close(p.lines)
		p.waited <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		// Normally stopped by the test already; this catches failures.
		_ = p.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, p.stderr.String())
		}
	})
	p.ready = p.next(t, "ready", "")
	return p
}

// next waits for the next output line of the given type and reason.
func (p *vsafilterProc) next(t *testing.T, typ, reason string) outputLine {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("%s exited while waiting for %s %s; stderr:\n%s", p.name, typ, reason, p.stderr.String())
			}
			if l.Type == typ && (reason == "" || l.Reason == reason) {
				return l
			}
		case <-deadline:
			t.Fatalf("%s: no %s %s line in 20s; stderr:\n%s", p.name, typ, reason, p.stderr.String())
		}
	}
}

func (p *vsafilterProc) counters(t *testing.T) outputLine {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	return p.next(t, "counters", "signal")
}

// stop sends SIGTERM and checks that the process prints its final counters
// and exits with status 0.
func (p *vsafilterProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.next(t, "counters", "exit")
	for range p.lines {
	}
	select {
	case err := <-p.waited:
		if err != nil {
			t.Errorf("%s exited with %v after SIGTERM", p.name, err)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("%s did not exit after SIGTERM", p.name)
	}
}

// delta is what changed between two counters lines, in the fields the
// test asserts on.
type delta struct {
	Received, Ignored, Forwarded, Dropped, NoticesSent, SendErrors uint64
	Invalid                                                        map[string]uint64
	Hits                                                           map[string]uint64
}

func diffCounters(before, after outputLine) delta {
	a, b := after.Appliance, before.Appliance
	d := delta{
		Received: a.Received - b.Received, Ignored: a.Ignored - b.Ignored, Forwarded: a.Forwarded - b.Forwarded,
		Dropped: a.Dropped - b.Dropped, NoticesSent: a.NoticesSent - b.NoticesSent, SendErrors: a.SendErrors - b.SendErrors,
		Invalid: map[string]uint64{}, Hits: map[string]uint64{},
	}
	for k, v := range a.Invalid {
		if n := v - b.Invalid[k]; n > 0 {
			d.Invalid[k] = n
		}
	}
	hits := func(prefix string, after, before []hitStats) {
		for i, h := range after {
			if n := h.Hits - before[i].Hits; n > 0 {
				d.Hits[prefix+h.Name] = n
			}
		}
	}
	hits("rule:", after.Filter.Rules, before.Filter.Rules)
	hits("signature:", after.Filter.Signatures, before.Filter.Signatures)
	if n := after.Filter.Default.Hits - before.Filter.Default.Hits; n > 0 {
		d.Hits["default"] = n
	}
	return d
}

const (
	vsa1Config = `
[output]
stats_interval = "0s"
[filter]
default = "allow"
[[rule]]
name = "deny-discard"
action = "deny"
proto = "udp"
dport = 9
`
	vsa2Config = `
[output]
stats_interval = "0s"
[[signature]]
name = "evil"
pattern = "EVIL-PAYLOAD"
`
)

// TestTwoVsafiltersInNamespaces is the end-to-end test of the appliance:
// two vsafilter processes, each in its own network namespace ("vsa1",
// "vsa2"), and the test acting as the DM in a third ("dm"). All three hang
// off one Linux bridge in a fourth namespace, the way VSAs and the DM share
// a host's switch: a one-armed appliance receives and forwards on the same
// interface, so a chain of point-to-point links would not model it.
//
// The DM sends frames for the route [vsa1, vsa2, dm] and checks what comes
// back byte for byte: a clean frame returns with the header advanced as
// SOURCE-ROUTE.md's vectors say; a frame vsa1's rule denies and one
// matching vsa2's signature come back as drop notices (reasons 1 and 2)
// from the right VSA; malformed frames never come back and each is counted
// under its reason in vsafilter's JSON counters.
func TestTwoVsafiltersInNamespaces(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := buildVsafilter(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	sw, dmNS, vsa1NS, vsa2NS := netnstest.New(t), netnstest.New(t), netnstest.New(t), netnstest.New(t)
	for _, ns := range []*netnstest.NS{sw, dmNS, vsa1NS, vsa2NS} {
		ns.QuietIPv6(t)
	}
	sw.AddBridge(t, "br0")
	for i, end := range []struct {
		ns  *netnstest.NS
		mac sourceroute.MAC
	}{{dmNS, dmMAC}, {vsa1NS, vsa1MAC}, {vsa2NS, vsa2MAC}} {
		netnstest.Veth(t,
			netnstest.End{NS: end.ns, Name: "eth0", MAC: net.HardwareAddr(end.mac[:])},
			netnstest.End{NS: sw, Name: fmt.Sprintf("port%d", i), Master: "br0"})
	}

	vsa1 := startVsafilter(t, ctx, vsa1NS, bin, "vsa1", vsa1Config, "-i", "eth0")
	vsa2 := startVsafilter(t, ctx, vsa2NS, bin, "vsa2", vsa2Config, "-i", "eth0")

	dm := openDM(t, dmNS)
	buf := make([]byte, 4096)
	// receive returns the next frame at the DM, or nil after wait.
	receive := func(wait time.Duration) []byte {
		rctx, rcancel := context.WithTimeout(ctx, wait)
		defer rcancel()
		n, err := dm.ReadFrame(rctx, buf)
		if err != nil {
			return nil
		}
		return append([]byte(nil), buf[:n]...)
	}
	send := func(frame []byte) {
		t.Helper()
		if err := dm.WriteFrame(ctx, frame); err != nil {
			t.Fatal(err)
		}
	}
	route := []sourceroute.MAC{vsa1MAC, vsa2MAC, dmMAC}
	chainFrame := func(inner []byte) []byte { return encapsulateFor(t, route, inner) }
	innerUDP := func(dport uint16, payload string) []byte {
		return eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.2", udp(40000, dport, []byte(payload))))
	}

	// The bridge and both processes are up, but prove the whole path
	// before measuring: probes until one makes the round trip (bounded).
	probe := chainFrame(innerUDP(7, "probe"))
	for attempt := 0; ; attempt++ {
		if attempt == 10 {
			t.Fatal("no probe came back through the chain")
		}
		send(probe)
		if got := receive(time.Second); got != nil {
			break
		}
	}
	for receive(200*time.Millisecond) != nil {
		// Drain late copies of earlier probes.
	}
	base1, base2 := vsa1.counters(t), vsa2.counters(t)

	v := loadVectors(t, "two-vsa-chain.json")
	inv := loadVectors(t, "invalid-frames.json")
	denied := chainFrame(innerUDP(9, "discard me"))
	evil := chainFrame(innerUDP(53, "xx EVIL-PAYLOAD xx"))
	evilAtVSA2 := advancedBy(t, evil, vsa1MAC)
	// A route whose only entry is vsa1. Sent from the DM's address: a
	// frame with vsa1's own source MAC would teach the bridge that vsa1
	// lives on the DM's port.
	pastLast := encapsulateFor(t, []sourceroute.MAC{vsa1MAC}, innerUDP(53, "nowhere"))
	copy(pastLast[6:12], dmMAC[:])
	marker := chainFrame(innerUDP(53, "marker"))

	send(v["dm_encapsulated_to_vsa1"])
	send(denied)
	send(evil)
	for _, name := range []string{"truncated_header_15_bytes", "num_zero", "next_out_of_range", "route_array_truncated",
		"missing_inner_ethernet_header", "dst_not_route_next", "multicast_hop_in_route", "wrong_ethertype"} {
		send(inv[name])
	}
	send(pastLast)
	// Each VSA handles its frames in order, so once the marker is back
	// every earlier frame has been dealt with.
	send(marker)

	markerBack := advancedBy(t, advancedBy(t, marker, vsa1MAC), vsa2MAC)
	var got []string
	for {
		f := receive(10 * time.Second)
		if f == nil {
			t.Fatalf("the marker never came back; received %q", got)
		}
		if bytes.Equal(f, markerBack) {
			break
		}
		got = append(got, hex.EncodeToString(f))
	}
	want := []string{
		hex.EncodeToString(v["vsa2_forwarded_to_dm"]),
		hex.EncodeToString(dropNotice(t, vsa1MAC, sourceroute.NoticePolicyDeny, denied)),
		hex.EncodeToString(dropNotice(t, vsa2MAC, sourceroute.NoticeSignature, evilAtVSA2)),
	}
	if diff := cmp.Diff(want, got, sortStrings); diff != "" {
		t.Errorf("frames at the DM (-want +got):\n%s", diff)
	}

	// Wrong-EtherType frames never reach the appliance: its socket is bound
	// to the MSR EtherType, so the kernel does not deliver them.
	wantVSA1 := delta{
		Received: 11, Forwarded: 3, Dropped: 1, NoticesSent: 1,
		Invalid: map[string]uint64{"truncated": 1, "hop_count": 1, "next_out_of_range": 1, "short_route": 1,
			"no_inner_frame": 1, "bad_hop_address": 1, "past_last_hop": 1},
		Hits: map[string]uint64{"rule:deny-discard": 1, "default": 3},
	}
	wantVSA2 := delta{
		Received: 4, Forwarded: 2, Dropped: 1, NoticesSent: 1,
		Invalid: map[string]uint64{"dst_mismatch": 1},
		Hits:    map[string]uint64{"signature:evil": 1, "default": 3},
	}
	if diff := cmp.Diff(wantVSA1, diffCounters(base1, vsa1.counters(t))); diff != "" {
		t.Errorf("vsa1 counters (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantVSA2, diffCounters(base2, vsa2.counters(t))); diff != "" {
		t.Errorf("vsa2 counters (-want +got):\n%s", diff)
	}
	checkInvalidNames(t)

	vsa1.stop(t)
	vsa2.stop(t)
}

// openDM opens the test DM's packet socket on eth0 in ns: every frame
// addressed to the DM, of any EtherType (forwards and drop notices).
func openDM(t *testing.T, ns *netnstest.NS) *appliance.PacketTransport {
	t.Helper()
	var dm *appliance.PacketTransport
	if err := ns.Do(func() (err error) {
		dm, err = appliance.OpenPacket("eth0", appliance.PacketConfig{OnlyTo: dmMAC})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dm.Close() })
	return dm
}

// checkInvalidNames guards the test's expectations against renamed reasons.
func checkInvalidNames(t *testing.T) {
	t.Helper()
	for r, name := range map[sourceroute.Reason]string{
		sourceroute.ReasonTruncated: "truncated", sourceroute.ReasonHopCount: "hop_count",
		sourceroute.ReasonNextOutOfRange: "next_out_of_range", sourceroute.ReasonShortRoute: "short_route",
		sourceroute.ReasonNoInnerFrame: "no_inner_frame", sourceroute.ReasonBadHopAddress: "bad_hop_address",
		sourceroute.ReasonPastLastHop: "past_last_hop", sourceroute.ReasonDstMismatch: "dst_mismatch",
	} {
		if r.String() != name {
			t.Errorf("reason %d is named %q, the test expects %q", r, r.String(), name)
		}
	}
}

var sortStrings = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

// encapsulateFor builds the frame the DM (the route's last entry) sends.
func encapsulateFor(t *testing.T, route []sourceroute.MAC, inner []byte) []byte {
	t.Helper()
	codec := sourceroute.DefaultCodec()
	hdr := make([]byte, sourceroute.HeaderLen(len(route)))
	if _, err := codec.BuildHeader(hdr, route[len(route)-1], route); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(hdr)+len(inner))
	if _, r := sourceroute.Encapsulate(out, hdr, inner); r != sourceroute.OK {
		t.Fatal(r)
	}
	return out
}

// advancedBy is frame as the VSA self forwards it.
func advancedBy(t *testing.T, frame []byte, self sourceroute.MAC) []byte {
	t.Helper()
	out := append([]byte(nil), frame...)
	codec := sourceroute.DefaultCodec()
	f, r := codec.Parse(out)
	if r == sourceroute.OK {
		r = codec.Advance(f, self)
	}
	if r != sourceroute.OK {
		t.Fatal(r)
	}
	return out
}

func dropNotice(t *testing.T, from sourceroute.MAC, why sourceroute.NoticeReason, dropped []byte) []byte {
	t.Helper()
	buf := make([]byte, 512)
	n, err := sourceroute.BuildDropNotice(buf, dmMAC, from, why, dropped)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// TestVsafilterFromKernelCmdline starts vsafilter the way an appliance VM's
// init does: everything from a kernel command line, with the interface
// still down and a hop address that is not the interface's own (so it must
// bring the link up and turn on promiscuous mode). It then forwards a
// frame, prints counters on its own every interval, and survives SIGHUP.
func TestVsafilterFromKernelCmdline(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := buildVsafilter(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dmNS, vsaNS := netnstest.New(t), netnstest.New(t)
	dmNS.QuietIPv6(t)
	vsaNS.QuietIPv6(t)
	netnstest.Veth(t, netnstest.End{NS: dmNS, Name: "eth0", MAC: net.HardwareAddr(dmMAC[:])}, netnstest.End{NS: vsaNS, Name: "eth0"})
	link, err := vsaNS.Netlink().LinkByName("eth0")
	if err == nil {
		err = vsaNS.Netlink().LinkSetDown(link)
	}
	if err != nil {
		t.Fatal(err)
	}

	rules := "[[rule]]\naction = \"deny\"\nproto = \"tcp\"\n"
	cmdline := filepath.Join(t.TempDir(), "cmdline")
	line := fmt.Sprintf("console=ttyS0 quiet vsafilter.iface=eth0 vsafilter.mac=%s vsafilter.stats=100ms vsafilter.wait=5s vsafilter.rules=%s\n",
		vsa1MAC, base64.StdEncoding.EncodeToString([]byte(rules)))
	if err := os.WriteFile(cmdline, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startVsafilter(t, ctx, vsaNS, bin, "vsa", "", "-config-from-cmdline", "-cmdline", cmdline)
	if !p.ready.Promiscuous || p.ready.Self != vsa1MAC.String() {
		t.Errorf("ready line %+v, want self %s in promiscuous mode", p.ready, vsa1MAC)
	}
	vsaNS.WaitOperUp(t, "eth0")

	dm := openDM(t, dmNS)
	frame := encapsulateFor(t, []sourceroute.MAC{vsa1MAC, dmMAC}, eth(etherTypeIPv4, ipv4(protoUDP, "10.0.0.1", "10.0.0.2", udp(1, 53, []byte("hi")))))
	want := advancedBy(t, frame, vsa1MAC)
	buf := make([]byte, 2048)
	for attempt := 0; ; attempt++ {
		if attempt == 10 {
			t.Fatal("no frame came back")
		}
		if err := dm.WriteFrame(ctx, frame); err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		n, err := dm.ReadFrame(rctx, buf)
		rcancel()
		if err == nil {
			if diff := cmp.Diff(want, buf[:n]); diff != "" {
				t.Fatalf("forwarded (-want +got):\n%s", diff)
			}
			break
		}
	}
	// Two interval reports, the second showing the forwarded frame.
	p.next(t, "counters", "interval")
	if l := p.next(t, "counters", "interval"); l.Self != vsa1MAC.String() || l.Appliance.Forwarded == 0 || len(l.Filter.Rules) != 1 {
		t.Errorf("interval counters %+v", l)
	}
	// A hangup must not end the appliance.
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.counters(t)
	p.stop(t)
}
