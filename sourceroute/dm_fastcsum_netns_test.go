//go:build linux

package sourceroute

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/safchain/ethtool"

	"github.com/vsagent/vsagent/internal/afpacket"
	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/vsafiltertest"
)

// TestDMFastPathWithChecksumOffloadingSenders: guests whose kernels leave
// TCP and UDP checksums to offload (a veth's default, as a virtio guest's
// tap does) talk through the fast path, without a chain and through ips
// then fw. The XDP program must complete those checksums before it
// redirects: a TCP stream of 256 KiB comes back byte for byte, every
// datagram arrives, and neither guest's kernel counts a checksum error,
// while the kernel carried most of the frames. Then pings: every echo
// request and reply after each direction's first FastPathAfter crosses
// the kernel.
func TestDMFastPathWithChecksumOffloadingSenders(t *testing.T) {
	netnstest.RequireRoot(t)
	bin := vsafiltertest.Build(t, "..")
	for _, chain := range [][]string{nil, {"ips", "fw"}} {
		t.Run(fmt.Sprintf("chain %v", chain), func(t *testing.T) { testFastPathChecksumOffload(t, bin, chain) })
	}
}

func testFastPathChecksumOffload(t *testing.T, bin string, chain []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lab := newChainLab(t, ctx, bin)
	for _, ns := range []*netnstest.NS{lab.a, lab.b, lab.ips.ns, lab.fw.ns} {
		attachPass(t, ns, "eth0")
	}
	for _, ns := range []*netnstest.NS{lab.a, lab.b} {
		if on := txChecksumOffload(t, ns); !on {
			t.Fatal("the guest's eth0 does not offload checksums: the test would prove nothing")
		}
	}
	// The guests know each other's MACs: ARP is not what this is about.
	for _, n := range []struct {
		ns      *netnstest.NS
		peer    string
		peerMAC MAC
	}{{lab.a, "10.9.0.2", lab.macB}, {lab.b, "10.9.0.1", lab.macA}} {
		if _, err := n.ns.Exec(ctx, "ip", "neigh", "replace", n.peer, "lladdr", net.HardwareAddr(n.peerMAC[:]).String(), "dev", "eth0", "nud", "permanent"); err != nil {
			t.Fatal(err)
		}
	}
	// The DM's ports are the agent's TPACKET rings, which complete the
	// checksums of the frames the userspace path forwards (a connection's
	// first frames, and every SYN and FIN).
	e, err := NewEngine(Config{Self: dmSelf, ReturnTimeout: 10 * time.Second,
		FastPath: newTestFastPath(t, lab.dm),
		Open: func(name string) (Port, error) {
			var s *afpacket.Socket
			err := lab.dm.Do(func() (err error) { s, err = afpacket.Open(afpacket.Config{Iface: name}); return err })
			return s, err
		},
		Logger: slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if err := e.Update(ctx, lab.snapshot(dmPolicy("p", chain...))); err != nil {
		t.Fatal(err)
	}
	runEngine(t, ctx, e)

	// TCP: b echoes what a sends.
	var ln net.Listener
	if err := lab.b.Do(func() (err error) { ln, err = net.Listen("tcp4", "10.9.0.2:7000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	var conn net.Conn
	if err := lab.a.Do(func() (err error) {
		conn, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp4", "10.9.0.2:7000")
		return err
	}); err != nil {
		t.Fatalf("%v; counters %+v", err, e.Counters())
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	sent := make([]byte, 256<<10)
	rand.Read(sent)
	go conn.Write(sent)
	got := make([]byte, len(sent))
	if n, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("TCP echo: %d of %d bytes back: %v; fast path %+v", n, len(sent), err, e.FastPathStats())
	}
	if !bytes.Equal(got, sent) {
		t.Fatal("TCP echo came back different")
	}

	// UDP: 200 datagrams of 1400 bytes, paced, all arrive whole.
	var rx, tx net.PacketConn
	if err := lab.b.Do(func() (err error) { rx, err = net.ListenPacket("udp4", "10.9.0.2:7001"); return err }); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	if err := lab.a.Do(func() (err error) { tx, err = net.ListenPacket("udp4", "10.9.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	const datagrams = 200
	dst := &net.UDPAddr{IP: net.IPv4(10, 9, 0, 2), Port: 7001}
	go func() {
		for i := range datagrams {
			tx.WriteTo(bytes.Repeat([]byte{byte(i)}, 1400), dst)
			time.Sleep(time.Millisecond)
		}
	}()
	buf := make([]byte, 2048)
	received := 0
	for rx.SetReadDeadline(time.Now().Add(20 * time.Second)); received < datagrams; received++ {
		n, _, err := rx.ReadFrom(buf)
		if err != nil {
			break
		}
		if n != 1400 {
			t.Fatalf("datagram of %d bytes", n)
		}
	}
	if received != datagrams {
		t.Errorf("%d of %d datagrams arrived", received, datagrams)
	}

	for name, ns := range map[string]*netnstest.NS{"a": lab.a, "b": lab.b} {
		for _, proto := range []string{"Tcp", "Udp"} {
			if n := snmpCounter(t, ns, proto, "InCsumErrors"); n != 0 {
				t.Errorf("guest %s's kernel counted %d %s checksum errors", name, n, proto)
			}
		}
	}
	// The engine reads the kernel's counters back once a second.
	st := e.FastPathStats()
	for deadline := time.Now().Add(5 * time.Second); st.Frames < datagrams/2 && time.Now().Before(deadline); st = e.FastPathStats() {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("chain %v: the kernel carried %d frames", chain, st.Frames)
	if st.Frames < datagrams/2 {
		t.Errorf("the kernel carried %d frames: the fast path was hardly used", st.Frames)
	}

	// Pings: the echo requests and replies after the first FastPathAfter
	// of each direction are the kernel's too.
	const pings = 20
	before := settledFastFrames(e)
	if out, err := lab.a.Exec(ctx, "ping", "-c", strconv.Itoa(pings), "-i", "0.05", "-W", "5", "10.9.0.2"); err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	// Each frame of a chained flow counts once per entry: push, each
	// appliance's hand-back. The entries go in right after the DM pushed
	// the last frame it pushes itself, whose hand-backs the kernel may
	// then carry too.
	want := uint64(2 * (pings - defaultFastPathAfter) * (len(chain) + 1))
	if got := settledFastFrames(e) - before; got < want || got > want+uint64(2*len(chain)) {
		t.Errorf("the kernel carried %d frames of %d pings, want %d to %d", got, pings, want, want+uint64(2*len(chain)))
	}
}

// settledFastFrames is what the fast path has counted once the engine's
// once-a-second reading of the kernel's counters stops changing it.
func settledFastFrames(e *Engine) uint64 {
	last := e.FastPathStats().Frames
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(1500 * time.Millisecond)
		now := e.FastPathStats().Frames
		if now == last {
			break
		}
		last = now
	}
	return last
}

// txChecksumOffload says whether ns's eth0 leaves checksums to offload.
func txChecksumOffload(t *testing.T, ns *netnstest.NS) bool {
	t.Helper()
	var on bool
	if err := ns.Do(func() error {
		et, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer et.Close()
		feats, err := et.Features("eth0")
		on = feats["tx-checksum-ip-generic"]
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return on
}

// snmpCounter reads a counter of ns's /proc/net/snmp.
func snmpCounter(t *testing.T, ns *netnstest.NS, proto, name string) int {
	t.Helper()
	value := -1
	if err := ns.Do(func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		var header []string
		for s := bufio.NewScanner(f); s.Scan(); {
			fields := strings.Fields(s.Text())
			if len(fields) == 0 || fields[0] != proto+":" {
				continue
			}
			if header == nil {
				header = fields
				continue
			}
			for i, h := range header {
				if h == name && i < len(fields) {
					value, err = strconv.Atoi(fields[i])
					return err
				}
			}
		}
		return fmt.Errorf("no %s %s in /proc/net/snmp", proto, name)
	}); err != nil {
		t.Fatal(err)
	}
	return value
}
