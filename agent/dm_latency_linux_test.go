//go:build linux

package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vsagent/vsagent/internal/netnstest"
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

// BenchmarkDMChainLatency measures the round-trip time of ICMP echo
// between two guests with the kernel bridge between them, with the DM
// passing their frames through, and with the DM routing both directions
// through a chain of two header appliances:
//
//	guest A ns: eth0 ── pa :host ns: pb ── eth0 :guest B ns
//	                       ap1, ap2 ── eth0 :appliance ns 1, 2
//
// The appliances are the reflectors of BenchmarkDMForwardVsBridge (parse,
// advance, send back). The pings are iputils ping, latPings per window,
// one every latInterval seconds, with static neighbour entries so that no
// ARP is timed. Modes alternate round by round. The metrics are the
// percentiles of every reply of a mode over all rounds, in microseconds,
// and what the DM adds to the bridge's at the median and the 99th
// percentile. ns/op is the whole run's time, meaningless. Run:
//
//	go test -run '^$' -bench DMChainLatency -benchtime 1x -v ./agent
func BenchmarkDMChainLatency(b *testing.B) {
	netnstest.RequireRoot(b)
	topo := newLatTopology(b)
	rtts := map[fwdMode][]time.Duration{}
	lost := map[fwdMode]int{}
	ctx := context.Background()
	for round := range latRounds {
		for _, mode := range []fwdMode{modeBridge, modePass, modeChain} {
			var got []time.Duration
			var err error
			switch mode {
			case modeBridge:
				err = topo.withBridge(b, func() error { got, err = topo.ping(ctx); return err })
			default:
				err = topo.withDM(b, mode == modeChain, func() error { got, err = topo.ping(ctx); return err })
			}
			if err != nil {
				b.Fatalf("round %d, %s: %v", round, mode, err)
			}
			b.Logf("round %d %-12s %4d replies  p50 %v  p99 %v", round, mode, len(got), percentile(got, 50), percentile(got, 99))
			rtts[mode] = append(rtts[mode], got...)
			lost[mode] += latPings - len(got)
		}
	}
	for _, mode := range []fwdMode{modeBridge, modePass, modeChain} {
		r := rtts[mode]
		if len(r) == 0 {
			b.Fatalf("%s: no reply at all", mode)
		}
		b.Logf("%-12s %5d replies, %d lost: p50 %v p99 %v", mode, len(r), lost[mode], percentile(r, 50), percentile(r, 99))
		b.ReportMetric(micros(percentile(r, 50)), string(mode)+"-p50-us")
		b.ReportMetric(micros(percentile(r, 99)), string(mode)+"-p99-us")
	}
	b.ReportMetric(micros(percentile(rtts[modeChain], 50)-percentile(rtts[modeBridge], 50)), "chain-added-p50-us")
	b.ReportMetric(micros(percentile(rtts[modeChain], 99)-percentile(rtts[modeBridge], 99)), "chain-added-p99-us")
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
	reflected    [2]interface{ Load() uint64 }
}

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
	for i := range 2 {
		ns := netnstest.New(b)
		ns.QuietIPv6(b)
		netnstest.Veth(b, netnstest.End{NS: ns, Name: fwdApplLink, MAC: net.HardwareAddr(fwdApplMAC[i][:]), MTU: 1600},
			netnstest.End{NS: t.host, Name: fmt.Sprintf(fwdApplPortFm, i+1), MTU: 1600})
		t.reflected[i] = startReflector(b, ns, fwdApplMAC[i])
	}
	return t
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

func (t *latTopology) withDM(b *testing.B, chain bool, run func() error) error {
	open, openTx := PacketPorts(t.hostPath)
	eng, err := sourceroute.NewEngine(sourceroute.Config{
		Codec: sourceroute.DefaultCodec(), Self: DMMAC("latency-host"), MaxFlows: 1 << 10,
		Open: open, OpenTx: openTx, Logger: quietLogger(),
	})
	if err != nil {
		return err
	}
	snap := sourceroute.Snapshot{Guests: []sourceroute.GuestRule{
		{Name: "a", Ready: true, Interfaces: []sourceroute.GuestInterface{{MAC: sourceroute.MAC(latMACA), Port: "pa", Network: "lan", Dedicated: true}}},
		{Name: "b", Ready: true, Interfaces: []sourceroute.GuestInterface{{MAC: sourceroute.MAC(latMACB), Port: "pb", Network: "lan", Dedicated: true}}},
	}}
	if chain {
		snap.Guests[0].Policy = &sourceroute.PolicyRule{Name: "latency", Chain: []string{"a1", "a2"}, Symmetric: true}
		for i, mac := range fwdApplMAC {
			snap.Appliances = append(snap.Appliances, sourceroute.ApplianceRule{
				Appliance: fmt.Sprintf("a%d", i+1), Instance: fmt.Sprintf("a%d-1", i+1), MAC: mac,
				Kind: sourceroute.HeaderAppliance, Port: fmt.Sprintf(fwdApplPortFm, i+1), Healthy: true,
			})
		}
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
