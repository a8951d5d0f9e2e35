package main

import (
	"context"
	"net/netip"
	"sort"
	"strconv"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/metrics"
	"github.com/vsagent/vsagent/sourceroute"
)

// dataplaneOps shows the distribution manager to operators: its flows to
// `vsactl flows`, its counters to the metrics.
type dataplaneOps struct{ e *sourceroute.Engine }

func (d dataplaneOps) Flows(ctx context.Context, guest string) ([]api.Flow, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	infos := d.e.Flows(guest)
	out := make([]api.Flow, 0, len(infos))
	for _, fi := range infos {
		f := api.Flow{
			Guest:       fi.Initiator,
			Protocol:    protocolName(fi.Key),
			Src:         endpoint(fi.Key.SrcAddr(), fi.Key.SrcPort(), fi.Key.SrcMAC(), fi.Key),
			Dst:         endpoint(fi.Key.DstAddr(), fi.Key.DstPort(), fi.Key.DstMAC(), fi.Key),
			Instances:   fi.Forward,
			Verdict:     fi.Verdict,
			Frames:      fi.Packets[0] + fi.Packets[1],
			Bytes:       fi.Bytes[0] + fi.Bytes[1],
			IdleSeconds: fi.Idle.Seconds(),
		}
		if f.Guest == "" {
			f.Guest = fi.Responder
		}
		for _, inst := range fi.Forward {
			if app, _, ok := appliance.ParseInstanceName(inst); ok {
				f.Chain = append(f.Chain, app)
			}
		}
		out = append(out, f)
	}
	return out, nil
}

func (d dataplaneOps) FlowCount() int { return d.e.Counters().Flows.Flows }

func (d dataplaneOps) Stats() metrics.DataplaneStats {
	c := d.e.Counters()
	var st metrics.DataplaneStats
	for name, g := range c.Guests {
		st.Traffic = append(st.Traffic,
			metrics.Traffic{Guest: name, Verdict: "sent", Frames: g.FramesOut, Bytes: g.BytesOut},
			metrics.Traffic{Guest: name, Verdict: "delivered", Frames: g.FramesIn, Bytes: g.BytesIn})
	}
	for _, in := range c.Instances {
		st.Traffic = append(st.Traffic,
			metrics.Traffic{Appliance: in.Appliance, Verdict: "sent", Frames: in.Sent, Bytes: in.SentBytes},
			metrics.Traffic{Appliance: in.Appliance, Verdict: "returned", Frames: in.Returned, Bytes: in.ReturnedBytes},
			metrics.Traffic{Appliance: in.Appliance, Verdict: "dropped", Frames: in.Notices})
	}
	for reason, n := range c.Drops {
		st.Drops = append(st.Drops, metrics.Drop{Reason: reason, Frames: n})
	}
	sort.Slice(st.Drops, func(i, j int) bool { return st.Drops[i].Reason < st.Drops[j].Reason })
	st.Flows, st.FlowCapacity, st.FlowsCreated = c.Flows.Flows, c.Flows.Capacity, c.Flows.Inserts
	st.FlowsRemoved = []metrics.FlowRemoval{
		{Reason: "expired", Flows: c.Flows.Expirations},
		{Reason: "evicted", Flows: c.Flows.Evictions},
		{Reason: "deleted", Flows: c.Flows.Deletes},
	}
	return st
}

func protocolName(k sourceroute.FlowKey) string {
	if k.Kind() == sourceroute.KindEthernet {
		return "ethertype-0x" + strconv.FormatUint(uint64(k.EtherType()), 16)
	}
	switch k.Proto() {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "icmpv6"
	case 132:
		return "sctp"
	}
	return strconv.Itoa(int(k.Proto()))
}

func endpoint(addr netip.Addr, port uint16, mac sourceroute.MAC, k sourceroute.FlowKey) string {
	if k.Kind() == sourceroute.KindEthernet {
		return mac.String()
	}
	switch k.Proto() {
	case 6, 17, 132:
		return netip.AddrPortFrom(addr, port).String()
	}
	return addr.String()
}
