package intercept

import (
	"encoding/xml"
	"fmt"
	"net"

	"libvirt.org/go/libvirtxml"

	"github.com/vsagent/vsagent/sriov"
)

// SRIOVNamespace is the guest metadata namespace in which the sriov-vlan
// backend keeps, for each interface it diverted, the VF settings it
// changed: the guest VF's and the DM VF's as they were before.
const SRIOVNamespace = "https://vsagent.dev/xmlns/intercept-sriov/1"

// vlanRecords is the metadata element:
//
//	<sriov-vlan>
//	  <vf mac="52:54:00:…" pf="0000:3b:00.0" index="2" intercept-vlan="3802" dm-index="0">
//	    <guest vlan="10" qos="0" spoofchk="on" trust="off"/>
//	    <dm vlan="0" qos="0" spoofchk="on" trust="off" promisc="off"/>
//	  </vf>
//	</sriov-vlan>
type vlanRecords struct {
	XMLName xml.Name       `xml:"sriov-vlan"`
	VFs     []vlanDiverted `xml:"vf"`
}

type vlanDiverted struct {
	MAC   string  `xml:"mac,attr"`
	PF    string  `xml:"pf,attr"`
	VF    int     `xml:"index,attr"`
	VLAN  int     `xml:"intercept-vlan,attr"`
	DMVF  int     `xml:"dm-index,attr"`
	Guest vfPrior `xml:"guest"`
	DM    vfPrior `xml:"dm"`
}

// vfPrior holds the settings a diversion changes. A toggle the driver did
// not report is empty and left alone on restore.
type vfPrior struct {
	VLAN     int    `xml:"vlan,attr"`
	QoS      int    `xml:"qos,attr"`
	SpoofChk string `xml:"spoofchk,attr,omitempty"`
	Trust    string `xml:"trust,attr,omitempty"`
	Promisc  string `xml:"promisc,attr,omitempty"`
}

func toggleWord(t sriov.Toggle) string {
	if t == sriov.ToggleUnset {
		return ""
	}
	return t.String()
}

func parseToggle(s string) (sriov.Toggle, error) {
	switch s {
	case "":
		return sriov.ToggleUnset, nil
	case "on":
		return sriov.ToggleOn, nil
	case "off":
		return sriov.ToggleOff, nil
	}
	return sriov.ToggleUnset, fmt.Errorf("%q is not on or off", s)
}

func priorOf(s sriov.VFSettings) vfPrior {
	return vfPrior{VLAN: s.VLAN.ID, QoS: s.VLAN.QoS, SpoofChk: toggleWord(s.SpoofCheck), Trust: toggleWord(s.Trust)}
}

// config is the VFConfig that restores p (without the netdev's promisc
// flag, which is no VF setting).
func (p vfPrior) config() sriov.VFConfig {
	spoof, _ := parseToggle(p.SpoofChk) // validated when parsed
	trust, _ := parseToggle(p.Trust)
	return sriov.VFConfig{VLAN: &sriov.VLAN{ID: p.VLAN, QoS: p.QoS}, SpoofCheck: spoof, Trust: trust}
}

func (p vfPrior) validate() error {
	if p.VLAN < 0 || p.VLAN > 4095 || p.QoS < 0 || p.QoS > 7 {
		return fmt.Errorf("VLAN %d QoS %d", p.VLAN, p.QoS)
	}
	for _, s := range []string{p.SpoofChk, p.Trust, p.Promisc} {
		if _, err := parseToggle(s); err != nil {
			return err
		}
	}
	return nil
}

func (d vlanDiverted) validate() error {
	if _, err := net.ParseMAC(d.MAC); err != nil {
		return err
	}
	if d.VF < 0 || d.DMVF < 0 || d.VF == d.DMVF {
		return fmt.Errorf("VF %d, DM VF %d", d.VF, d.DMVF)
	}
	if d.VLAN < 1 || d.VLAN > 4094 {
		return fmt.Errorf("intercept VLAN %d", d.VLAN)
	}
	if err := d.Guest.validate(); err != nil {
		return fmt.Errorf("guest VF: %w", err)
	}
	if err := d.DM.validate(); err != nil {
		return fmt.Errorf("DM VF: %w", err)
	}
	return nil
}

// parseVLANRecords finds the sriov-vlan element among the children of a
// domain's <metadata> (its inner XML). No element means no records; one
// that cannot be decoded or holds impossible values is an error, so that
// nobody overwrites what it holds.
func parseVLANRecords(metadata string) (vlanRecords, error) {
	var rs vlanRecords
	if _, err := decodeMetadataElement(metadata, SRIOVNamespace, "sriov-vlan", &rs); err != nil {
		return vlanRecords{}, err
	}
	for i, d := range rs.VFs {
		if err := d.validate(); err != nil {
			return vlanRecords{}, fmt.Errorf("%w: sriov-vlan record %d: %w", ErrRecord, i, err)
		}
		mac, _ := net.ParseMAC(d.MAC)
		rs.VFs[i].MAC = mac.String()
	}
	return rs, nil
}

func vlanRecordsOf(dom *libvirtxml.Domain) (vlanRecords, error) {
	if dom.Metadata == nil {
		return vlanRecords{}, nil
	}
	return parseVLANRecords(dom.Metadata.XML)
}

func (rs vlanRecords) find(mac net.HardwareAddr) (vlanDiverted, bool) {
	for _, d := range rs.VFs {
		if d.MAC == mac.String() {
			return d, true
		}
	}
	return vlanDiverted{}, false
}

func (rs vlanRecords) with(d vlanDiverted) vlanRecords {
	mac, _ := net.ParseMAC(d.MAC)
	out := rs.without(mac)
	out.VFs = append(out.VFs, d)
	return out
}

func (rs vlanRecords) without(mac net.HardwareAddr) vlanRecords {
	out := vlanRecords{}
	for _, d := range rs.VFs {
		if d.MAC != mac.String() {
			out.VFs = append(out.VFs, d)
		}
	}
	return out
}

// marshal returns the element to store, or "" (which removes it) when no
// record is left.
func (rs vlanRecords) marshal() (string, error) {
	if len(rs.VFs) == 0 {
		return "", nil
	}
	out, err := xml.Marshal(rs)
	if err != nil {
		return "", fmt.Errorf("encode sriov-vlan records: %w", err)
	}
	return string(out), nil
}
