package vmimage_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"
	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/internal/libvirtlab"
	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/vmimage"
	"github.com/vsagent/vsagent/sourceroute"
)

// buildVsafilter builds the reference appliance as a static binary, as the
// appliance-image target does.
func buildVsafilter(ctx context.Context, t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "vsafilter")
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "github.com/vsagent/vsagent/cmd/vsafilter")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building vsafilter: %v\n%s", err, out)
	}
	return bin
}

// buildImage builds the appliance image into a temporary folder, with the
// kernel from the cache the lab uses (downloaded on the first run only).
func buildImage(ctx context.Context, t *testing.T) vmimage.Appliance {
	t.Helper()
	cacheDir, err := libvirtlab.CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	img, err := vmimage.BuildAppliance(ctx, vmimage.ApplianceOptions{
		OutDir:    t.TempDir(),
		Vsafilter: buildVsafilter(ctx, t),
		Cache:     vmimage.Cache{Dir: cacheDir, Logf: t.Logf},
	})
	if errors.Is(err, vmimage.ErrMissingTool) || errors.Is(err, vmimage.ErrDownload) {
		t.Skipf("skipping: cannot build the appliance image here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// headerTemplate is testdata/templates/vsa-header.xml pointed at img.
func headerTemplate(t *testing.T, img vmimage.Appliance) *libvirtxml.Domain {
	t.Helper()
	doc, err := os.ReadFile("../../testdata/templates/vsa-header.xml")
	if err != nil {
		t.Fatal(err)
	}
	dom := &libvirtxml.Domain{}
	if err := dom.Unmarshal(string(doc)); err != nil {
		t.Fatal(err)
	}
	dom.OS.Kernel, dom.OS.Initrd = img.Kernel, img.Initrd
	return dom
}

// instance makes appliance instance n from the template the way the agent
// does, then wires it for the test: a tap of a known name, the serial
// console in a file and the given kernel command line.
func instance(t *testing.T, lab *libvirtlab.Lab, tmpl *libvirtxml.Domain, n int, cmdline string) (dom *libvirtxml.Domain, tap, console string, mac sourceroute.MAC) {
	t.Helper()
	dom, macs, err := appliance.NewInstance(tmpl, appliance.Spec{
		Appliance: "header", Index: n, Kind: appliance.KindHeader,
		VCPUs: 1, MemoryKiB: 128 << 10, HostID: lab.HostUUID,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	copy(mac[:], macs[0])
	tap = netnstest.UniqueName("vsat")
	dom.Devices.Interfaces[0].Target = &libvirtxml.DomainInterfaceTarget{Dev: tap}
	console = filepath.Join(lab.Dir, dom.Name+".console")
	port := uint(0)
	dom.Devices.Serials = []libvirtxml.DomainSerial{{
		Source: &libvirtxml.DomainChardevSource{File: &libvirtxml.DomainChardevSourceFile{Path: console}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port},
	}}
	dom.Devices.Consoles = nil
	dom.OS.Cmdline = cmdline
	return dom, tap, console, mac
}

func virsh(ctx context.Context, t *testing.T, lab *libvirtlab.Lab, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", lab.URI()}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("virsh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func define(ctx context.Context, t *testing.T, lab *libvirtlab.Lab, dom *libvirtxml.Domain) {
	t.Helper()
	doc, err := dom.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(lab.Dir, dom.Name+".xml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	virsh(ctx, t, lab, "define", path)
}

// openInNetNS opens a packet socket on ifname inside the named network
// namespace. The switch happens on a locked thread that is thrown away if
// it cannot be switched back; the socket stays in the namespace.
func openInNetNS(name, ifname string, cfg appliance.PacketConfig) (*appliance.PacketTransport, error) {
	type result struct {
		tr  *appliance.PacketTransport
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		tr, err := appliance.OpenPacket(ifname, cfg)
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		done <- result{tr, err}
	}()
	r := <-done
	return r.tr, r.err
}

// The DM side of the test: its MAC and the inner frames it sends.
var dmMAC = sourceroute.MAC{0x02, 0x00, 0x00, 0x00, 0x0d, 0x01}

// udpFrame is an Ethernet/IPv4/UDP frame 10.0.0.1:40000 → 10.0.0.2:dport,
// the shape of SOURCE-ROUTE.md's test vector.
func udpFrame(dport uint16, payload []byte) []byte {
	return ipv4Frame(17, append(l4Ports(40000, dport, 8+len(payload)), payload...))
}

// tcpFrame is a TCP SYN 10.0.0.1:40001 → 10.0.0.2:dport.
func tcpFrame(dport uint16) []byte {
	seg := make([]byte, 20)
	binary.BigEndian.PutUint16(seg[0:], 40001)
	binary.BigEndian.PutUint16(seg[2:], dport)
	seg[12] = 5 << 4 // data offset
	seg[13] = 0x02   // SYN
	binary.BigEndian.PutUint16(seg[14:], 65535)
	return ipv4Frame(6, seg)
}

func l4Ports(sport, dport uint16, udpLen int) []byte {
	h := make([]byte, 8)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(udpLen))
	return h
}

func ipv4Frame(proto byte, l4 []byte) []byte {
	eth := []byte{0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00}
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	return append(append(eth, ip...), l4...)
}

// msr encapsulates inner for the chain [vsa, DM], as the DM's first hop.
func msr(t *testing.T, vsa sourceroute.MAC, inner []byte) []byte {
	t.Helper()
	codec := sourceroute.DefaultCodec()
	hdr := make([]byte, sourceroute.HeaderLen(2))
	if _, err := codec.BuildHeader(hdr, dmMAC, []sourceroute.MAC{vsa, dmMAC}); err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, len(hdr)+len(inner))
	if _, r := sourceroute.Encapsulate(frame, hdr, inner); r != sourceroute.OK {
		t.Fatalf("encapsulate: %v", r)
	}
	return frame
}

// advanced is what SOURCE-ROUTE.md says vsa sends on: next+1, dst =
// route[next], src = vsa, nothing else changed.
func advanced(sent []byte, vsa sourceroute.MAC) []byte {
	want := bytes.Clone(sent)
	copy(want[0:6], dmMAC[:])
	copy(want[6:12], vsa[:])
	want[15]++
	return want
}

// counters is the part of vsafilter's counters line the test checks.
type counters struct {
	Type      string `json:"type"`
	Appliance struct {
		Received    uint64            `json:"received"`
		Forwarded   uint64            `json:"forwarded"`
		Dropped     uint64            `json:"dropped"`
		Invalid     map[string]uint64 `json:"invalid"`
		SendErrors  uint64            `json:"send_errors"`
		NoticesSent uint64            `json:"notices_sent"`
	} `json:"appliance"`
}

// lastCounters returns the newest counters line of a console log.
func lastCounters(console string) (counters, string, bool) {
	data, _ := os.ReadFile(console)
	var last counters
	var line string
	found := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		text := strings.TrimSpace(sc.Text())
		if i := strings.Index(text, `{"type":"counters"`); i >= 0 {
			var c counters
			if json.Unmarshal([]byte(text[i:]), &c) == nil {
				last, line, found = c, text[i:], true
			}
		}
	}
	return last, line, found
}

// poll calls cond every interval until it holds, at most n times.
func poll(t *testing.T, what string, n int, interval time.Duration, cond func() bool) {
	t.Helper()
	for i := 0; i < n; i++ {
		if cond() {
			return
		}
		time.Sleep(interval)
	}
	t.Fatalf("gave up waiting until %s", what)
}

// TestApplianceBoots boots the appliance image as a real VM from the header
// template, acts as the DM on the VM's tap and checks that vsafilter in the
// VM forwards, denies and reports exactly as SOURCE-ROUTE.md and its rules
// say; a second instance with a broken configuration on a config disk must
// power itself off.
func TestApplianceBoots(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for a private libvirtd, taps and packet sockets")
	}
	lab := libvirtlab.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	img := buildImage(ctx, t)
	tmpl := headerTemplate(t, img)

	// The template's own command line, with counters every second.
	cmdline := strings.Replace(tmpl.OS.Cmdline, "vsafilter.stats=10s", "vsafilter.stats=1s", 1)
	if cmdline == tmpl.OS.Cmdline {
		t.Fatalf("template command line has no vsafilter.stats=10s: %s", cmdline)
	}
	good, tap, console, vsa := instance(t, lab, tmpl, 1, cmdline)
	define(ctx, t, lab, good)

	// Instance 2 reads a configuration with a typo from a config disk.
	disk := filepath.Join(lab.Dir, "bad-config.img")
	if err := vmimage.WriteConfigDisk(disk, []byte("[filter]\ndefualt = \"deny\"\n")); err != nil {
		t.Fatal(err)
	}
	badCmdline, err := vmimage.Cmdline(vmimage.CmdlineOptions{ConfigDisk: "/dev/vda"})
	if err != nil {
		t.Fatal(err)
	}
	bad, _, badConsole, _ := instance(t, lab, tmpl, 2, badCmdline)
	bad.Devices.Disks = []libvirtxml.DomainDisk{{
		Device:   "disk",
		Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
		Source:   &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: disk}},
		Target:   &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
		ReadOnly: &libvirtxml.DomainDiskReadOnly{},
	}}
	define(ctx, t, lab, bad)

	start := time.Now()
	virsh(ctx, t, lab, "start", good.Name)
	virsh(ctx, t, lab, "start", bad.Name)
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range []string{console, badConsole} {
				out, _ := os.ReadFile(c)
				t.Logf("== %s\n%s", filepath.Base(c), out)
			}
		}
	})

	dm, err := openInNetNS(lab.NetNS, tap, appliance.PacketConfig{OnlyTo: dmMAC})
	if err != nil {
		t.Fatal(err)
	}
	defer dm.Close()
	if mtu := dm.MTU(); mtu != 1600 {
		t.Errorf("tap MTU %d, the template asks for 1600", mtu)
	}
	// The DM's receive side: every frame addressed to the DM, in order.
	received := make(chan []byte, 64)
	var forwardedSeen atomic.Uint64
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := dm.ReadFrame(ctx, buf)
			if err != nil {
				close(received)
				return
			}
			frame := bytes.Clone(buf[:n])
			if binary.BigEndian.Uint16(frame[12:14]) == sourceroute.DefaultEtherType {
				forwardedSeen.Add(1)
			}
			received <- frame
		}
	}()
	send := func(frame []byte) {
		t.Helper()
		if err := dm.WriteFrame(ctx, frame); err != nil {
			t.Fatal(err)
		}
	}
	// expect waits for the next frame the VM sends to the DM.
	expect := func(what string) []byte {
		t.Helper()
		select {
		case f, ok := <-received:
			if !ok {
				t.Fatalf("%s: the DM socket closed", what)
			}
			return f
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: nothing came back", what)
		}
		return nil
	}

	// Boot: probe until vsafilter forwards the first frame.
	var bootTime time.Duration
	probe := msr(t, vsa, udpFrame(53, []byte("probe")))
	for attempt := 0; bootTime == 0; attempt++ {
		if attempt == 360 {
			t.Fatal("the appliance forwarded nothing within 90s of start")
		}
		send(probe)
		select {
		case f := <-received:
			if diff := cmp.Diff(advanced(probe, vsa), f); diff != "" {
				t.Fatalf("first frame back (-want +got):\n%s", diff)
			}
			bootTime = time.Since(start)
		case <-time.After(250 * time.Millisecond):
		}
	}
	t.Logf("boot: virsh start → first frame forwarded: %.1fs", bootTime.Seconds())
	// Probes still in flight when the first came back come back too.
	time.Sleep(time.Second)
	for len(received) > 0 {
		<-received
	}

	vector := testVector(t)
	tests := []struct {
		name   string
		inner  []byte
		notice sourceroute.NoticeReason // 0: forwarded
	}{
		{"test vector, allowed", vector, 0},
		{"full-size frame, allowed", udpFrame(53, bytes.Repeat([]byte{0xa5}, 1500-20-8)), 0},
		{"telnet, denied by rule", tcpFrame(23), sourceroute.NoticePolicyDeny},
		{"EICAR, dropped by signature", udpFrame(9, []byte(`X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!`)), sourceroute.NoticeSignature},
	}
	for _, tt := range tests {
		sent := msr(t, vsa, tt.inner)
		send(sent)
		got := expect(tt.name)
		if tt.notice == 0 {
			if diff := cmp.Diff(advanced(sent, vsa), got); diff != "" {
				t.Errorf("%s: forwarded frame (-want +got):\n%s", tt.name, diff)
			}
			continue
		}
		n, r := sourceroute.ParseDropNotice(got)
		if r != sourceroute.OK {
			t.Errorf("%s: got %x, not a drop notice: %v", tt.name, got, r)
			continue
		}
		wantNotice := sourceroute.DropNotice{To: dmMAC, From: vsa, Why: tt.notice, Dropped: sent}
		if diff := cmp.Diff(wantNotice, n); diff != "" {
			t.Errorf("%s: drop notice (-want +got):\n%s", tt.name, diff)
		}
	}
	// An invalid header (num = 0) is dropped silently and counted.
	invalid := msr(t, vsa, vector)
	invalid[14] = 0
	send(invalid)

	var final counters
	poll(t, "the console shows the counters of every frame", 60, 500*time.Millisecond, func() bool {
		c, line, ok := lastCounters(console)
		final = c
		a := c.Appliance
		if ok && a.Forwarded == forwardedSeen.Load() && a.Dropped == 2 && a.NoticesSent == 2 && a.Invalid["hop_count"] == 1 {
			t.Logf("console: %s", line)
			return true
		}
		return false
	})
	if final.Appliance.SendErrors != 0 {
		t.Errorf("vsafilter reports %d send errors", final.Appliance.SendErrors)
	}
	select {
	case f := <-received:
		t.Errorf("unexpected frame to the DM: %x", f)
	default:
	}

	// The broken instance: vsafilter names the typo, init powers off, and
	// libvirt sees the domain stop.
	poll(t, bad.Name+" stops", 180, 500*time.Millisecond, func() bool {
		return virsh(ctx, t, lab, "domstate", bad.Name) == "shut off"
	})
	out, _ := os.ReadFile(badConsole)
	for _, want := range []string{"defualt", vmimage.InitPrefix, "vsafilter exited with status 1; powering off"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("console of %s lacks %q:\n%s", bad.Name, want, out)
		}
	}
	if state := virsh(ctx, t, lab, "domstate", good.Name); state != "running" {
		t.Errorf("%s is %s, want running", good.Name, state)
	}
	// The guest's own view of its boot, for docs/appliance-image.md.
	goodOut, _ := os.ReadFile(console)
	for _, line := range strings.Split(string(goodOut), "\n") {
		if strings.Contains(line, vmimage.InitPrefix) {
			t.Logf("console: %s", strings.TrimSpace(line))
		}
	}
}

// testVector returns the original frame of SOURCE-ROUTE.md's test vector
// (IPv4/UDP 10.0.0.1:40000 → 10.0.0.2:53, "hello").
func testVector(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "two-vsa-chain.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Original string `json:"original_frame"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	frame, err := hex.DecodeString(v.Original)
	if err != nil {
		t.Fatal(err)
	}
	return frame
}
