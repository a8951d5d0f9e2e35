//go:build linux

package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/vsagent/vsagent/internal/netnstest"
	"github.com/vsagent/vsagent/internal/xdpfast"
	"github.com/vsagent/vsagent/internal/xdpgen"
	"github.com/vsagent/vsagent/sourceroute"
)

// Sizes of the latency benchmark: latPings echo requests per window, one
// every latInterval, in latRounds rounds of every mode.
const (
	latPings    = 1000
	latInterval = "0.002"
	latRounds   = 3
)

var (
	latMACA = net.HardwareAddr{0x52, 0x54, 0, 0x1a, 0, 1}
	latMACB = net.HardwareAddr{0x52, 0x54, 0, 0x1a, 0, 2}
	latIPA  = net.IPv4(10, 77, 0, 1)
	latIPB  = net.IPv4(10, 77, 0, 2)
)

// BenchmarkDMChainLatency measures the round-trip time of ICMP echo, and
// of a UDP echo, between two guests with the kernel bridge between them,
// with the DM passing their frames through, and with the DM routing both
// directions through a chain of two header appliances, each DM mode on the
// userspace path and with the kernel fast path (pass-fast, chain-fast):
//
//	guest A ns: eth0 ── pa :host ns: pb ── eth0 :guest B ns
//	                       ap1, ap2 ── eth0 :appliance ns 1, 2
//
// The appliances are the reflectors of BenchmarkDMForwardVsBridge (parse,
// advance, send back). The pings are iputils ping, latPings per window,
// one every latInterval seconds, with static neighbour entries so that no
// ARP is timed. The fast path carries UDP and TCP only, so the pings take
// the userspace path in every DM mode (a control), and the UDP echo
// measures the fast path: a Go client in A sends latPings 64-byte
// datagrams of one flow, one every latInterval, each after the previous
// reply (or a second without one), to a Go echo server in B. In the fast
// modes the guests' and appliances' ends of their links run a
// pass-everything XDP program, which redirects into a veth need. Modes
// alternate round by round. The metrics are the percentiles of every
// reply of a mode over all rounds, in microseconds (ping: <mode>-p50-us;
// UDP echo: udp-<mode>-p50-us), and what the chain modes add to the
// bridge's at the median and the 99th percentile. ns/op is the whole
// run's time, meaningless. Run:
//
//	go test -run '^$' -bench DMChainLatency -benchtime 1x -v ./agent
func BenchmarkDMChainLatency(b *testing.B) {
	netnstest.RequireRoot(b)
	topo := newLatTopology(b)
	modes := []fwdMode{modeBridge, modePass, modePassFast, modeChain, modeChainFast}
	probes := []struct {
		name string // metric prefix
		run  func(context.Context) ([]time.Duration, error)
	}{{"", topo.ping}, {"udp-", topo.udpEcho}}
	rtts := map[string][]time.Duration{}
	lost := map[string]int{}
	ctx := context.Background()
	for round := range latRounds {
		for _, mode := range modes {
			got := make([][]time.Duration, len(probes))
			run := func() error {
				for i, p := range probes {
					var err error
					if got[i], err = p.run(ctx); err != nil {
						return err
					}
				}
				return nil
			}
			var err error
			switch mode {
			case modeBridge:
				err = topo.withBridge(b, run)
			default:
				chain, fast := mode == modeChain || mode == modeChainFast, mode == modePassFast || mode == modeChainFast
				err = topo.withDM(b, chain, fast, run)
			}
			if err != nil {
				b.Fatalf("round %d, %s: %v", round, mode, err)
			}
			for i, p := range probes {
				b.Logf("round %d %-4s %-12s %4d replies  p50 %v  p99 %v", round, p.name+"rtt", mode, len(got[i]), percentile(got[i], 50), percentile(got[i], 99))
				rtts[p.name+string(mode)] = append(rtts[p.name+string(mode)], got[i]...)
				lost[p.name+string(mode)] += latPings - len(got[i])
			}
		}
	}
	for _, p := range probes {
		for _, mode := range modes {
			name := p.name + string(mode)
			r := rtts[name]
			if len(r) == 0 {
				b.Fatalf("%s: no reply at all", name)
			}
			b.Logf("%-16s %5d replies, %d lost: p50 %v p99 %v", name, len(r), lost[name], percentile(r, 50), percentile(r, 99))
			b.ReportMetric(micros(percentile(r, 50)), name+"-p50-us")
			b.ReportMetric(micros(percentile(r, 99)), name+"-p99-us")
		}
		bridge := rtts[p.name+string(modeBridge)]
		for _, mode := range []fwdMode{modeChain, modeChainFast} {
			r := rtts[p.name+string(mode)]
			b.ReportMetric(micros(percentile(r, 50)-percentile(bridge, 50)), p.name+string(mode)+"-added-p50-us")
			b.ReportMetric(micros(percentile(r, 99)-percentile(bridge, 99)), p.name+string(mode)+"-added-p99-us")
		}
	}
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// percentile is the nearest-rank percentile p of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := (len(s)*p + 99) / 100
	return s[max(rank, 1)-1]
}

type latTopology struct {
	a, bNS, host *netnstest.NS
	hostPath     string
	reflected    [2]*atomic.Uint64
	appl         [2]*netnstest.NS
	pass         *ebpf.Program
}

// UDP echo ports.
const (
	latEchoPort   = 7007
	latClientPort = 7008
)

func newLatTopology(b *testing.B) *latTopology {
	t := &latTopology{a: netnstest.New(b), bNS: netnstest.New(b), host: netnstest.New(b)}
	t.hostPath = filepath.Join("/var/run/netns", t.host.Name())
	for _, ns := range []*netnstest.NS{t.a, t.bNS, t.host} {
		ns.QuietIPv6(b)
	}
	netnstest.Veth(b, netnstest.End{NS: t.a, Name: "eth0", MAC: latMACA}, netnstest.End{NS: t.host, Name: "pa"})
	netnstest.Veth(b, netnstest.End{NS: t.bNS, Name: "eth0", MAC: latMACB}, netnstest.End{NS: t.host, Name: "pb"})
	for _, g := range []struct {
		ns       *netnstest.NS
		ip, peer net.IP
		peerMAC  net.HardwareAddr
	}{{t.a, latIPA, latIPB, latMACB}, {t.bNS, latIPB, latIPA, latMACA}} {
		nl := g.ns.Netlink()
		l, err := nl.LinkByName("eth0")
		if err != nil {
			b.Fatal(err)
		}
		if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: g.ip, Mask: net.CIDRMask(24, 32)}}); err != nil {
			b.Fatal(err)
		}
		if err := nl.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: g.peer, HardwareAddr: g.peerMAC}); err != nil {
			b.Fatal(err)
		}
	}
	t.host.AddBridge(b, fwdBridge)
	t.appl, t.reflected = startReflectors(b, t.host)
	pass, err := xdpgen.PassProgram()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pass.Close() })
	t.pass = pass
	t.startEcho(b)
	return t
}

// startEcho runs a UDP echo server in B until the benchmark ends.
func (t *latTopology) startEcho(b *testing.B) {
	var c net.PacketConn
	if err := t.bNS.Do(func() (err error) {
		c, err = net.ListenPacket("udp4", net.JoinHostPort(latIPB.String(), strconv.Itoa(latEchoPort)))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, addr, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteTo(buf[:n], addr)
		}
	}()
	b.Cleanup(func() { c.Close(); <-done })
}

// udpEcho sends latPings datagrams of one flow from A to B's echo server,
// each once the previous came back or was given up, and returns the round
// trip of every echo.
func (t *latTopology) udpEcho(ctx context.Context) ([]time.Duration, error) {
	var c *net.UDPConn
	if err := t.a.Do(func() (err error) {
		c, err = net.DialUDP("udp4", &net.UDPAddr{IP: latIPA, Port: latClientPort}, &net.UDPAddr{IP: latIPB, Port: latEchoPort})
		return err
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	interval, err := time.ParseDuration(latInterval + "s")
	if err != nil {
		return nil, err
	}
	req, resp := make([]byte, 64), make([]byte, 2048)
	var rtts []time.Duration
	for i := range latPings {
		if err := ctx.Err(); err != nil {
			return rtts, err
		}
		binary.BigEndian.PutUint32(req, uint32(i))
		start := time.Now()
		if _, err := c.Write(req); err != nil {
			return rtts, fmt.Errorf("udp echo: %w", err)
		}
		if err := c.SetReadDeadline(start.Add(time.Second)); err != nil {
			return rtts, err
		}
		for {
			n, err := c.Read(resp)
			if err != nil {
				break // lost: go on with the next
			}
			if n >= 4 && binary.BigEndian.Uint32(resp) == uint32(i) {
				rtts = append(rtts, time.Since(start))
				break
			}
		}
		time.Sleep(interval)
	}
	return rtts, nil
}

// setXDP attaches the program fd (-1: detaches) to the link of that name
// in each namespace.
func setXDP(nss []*netnstest.NS, link string, fd int) error {
	for _, ns := range nss {
		if err := ns.Do(func() error {
			l, err := netlink.LinkByName(link)
			if err != nil {
				return err
			}
			return netlink.LinkSetXdpFd(l, fd)
		}); err != nil {
			return fmt.Errorf("XDP program %d on %s: %w", fd, link, err)
		}
	}
	return nil
}

// ping sends latPings echo requests from A to B and returns the round trip
// of every reply.
func (t *latTopology) ping(ctx context.Context) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := t.a.Exec(ctx, "ping", "-n", "-c", strconv.Itoa(latPings), "-i", latInterval, "-W", "1", latIPB.String())
	var exit interface{ ExitCode() int }
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) { // 1: some replies missing
		return nil, fmt.Errorf("ping: %w: %s", err, out)
	}
	var rtts []time.Duration
	for line := range bytes.Lines(out) {
		_, after, ok := bytes.Cut(line, []byte(" time="))
		if !ok {
			continue
		}
		ms, _, _ := bytes.Cut(after, []byte(" "))
		v, err := strconv.ParseFloat(string(ms), 64)
		if err != nil {
			return nil, fmt.Errorf("ping output %q: %w", line, err)
		}
		rtts = append(rtts, time.Duration(v*float64(time.Millisecond)))
	}
	return rtts, nil
}

func (t *latTopology) withBridge(b *testing.B, run func() error) error {
	nl := t.host.Netlink()
	br, err := nl.LinkByName(fwdBridge)
	if err != nil {
		return err
	}
	for _, name := range []string{"pa", "pb"} {
		l, err := nl.LinkByName(name)
		if err != nil {
			return err
		}
		if err := nl.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("enslave %s: %w", name, err)
		}
		defer func() {
			if err := nl.LinkSetNoMaster(l); err != nil {
				b.Errorf("release %s from the bridge: %v", name, err)
			}
		}()
	}
	return run()
}

func (t *latTopology) withDM(b *testing.B, chain, fast bool, run func() error) error {
	open, openTx := PacketPorts(t.hostPath)
	cfg := sourceroute.Config{
		Codec: sourceroute.DefaultCodec(), Self: DMMAC("latency-host"), MaxFlows: 1 << 10,
		Open: open, OpenTx: openTx, Logger: quietLogger(),
	}
	var fp *xdpfast.FastPath
	if fast {
		var err error
		if fp, err = xdpfast.New(xdpfast.Config{Do: t.host.Do, MaxEntries: 1 << 10}); err != nil {
			b.Skipf("no XDP fast path: %v", err)
		}
		nss := []*netnstest.NS{t.a, t.bNS}
		if chain {
			nss = append(nss, t.appl[:]...)
		}
		if err := setXDP(nss, "eth0", t.pass.FD()); err != nil {
			fp.Close()
			return err
		}
		defer func() {
			if err := errors.Join(fp.Close(), setXDP(nss, "eth0", -1)); err != nil {
				b.Error(err)
			}
		}()
		cfg.FastPath = fp
	}
	eng, err := sourceroute.NewEngine(cfg)
	if err != nil {
		return err
	}
	snap := sourceroute.Snapshot{Guests: []sourceroute.GuestRule{
		{Name: "a", Ready: true, Interfaces: []sourceroute.GuestInterface{{MAC: sourceroute.MAC(latMACA), Port: "pa", Network: "lan", Dedicated: true}}},
		{Name: "b", Ready: true, Interfaces: []sourceroute.GuestInterface{{MAC: sourceroute.MAC(latMACB), Port: "pb", Network: "lan", Dedicated: true}}},
	}}
	if chain {
		snap.Guests[0].Policy = &sourceroute.PolicyRule{Name: "latency", Chain: []string{"a1", "a2"}, Symmetric: true}
		snap.Appliances = reflectorAppliances()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := eng.Update(ctx, snap); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	before := [2]uint64{t.reflected[0].Load(), t.reflected[1].Load()}
	runErr := run()
	if fast {
		if st := eng.FastPathStats(); runErr == nil && st.Entries == 0 {
			runErr = errors.New("nothing was offloaded to the fast path")
		}
	}
	cancel()
	if err := errors.Join(<-done, eng.Close()); err != nil {
		return fmt.Errorf("DM engine: %w", err)
	}
	if chain {
		for i, r := range t.reflected {
			// Every echo and every reply crosses both appliances.
			if n := r.Load() - before[i]; runErr == nil && n == 0 {
				return fmt.Errorf("appliance a%d reflected nothing: the chain was not taken", i+1)
			}
		}
	}
	return runErr
}
