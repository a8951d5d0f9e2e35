package intercept

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// tcMessage builds a filter or qdisc dump message as the kernel sends it.
func tcMessage(ifindex int32, handle, parent, info uint32, attrs ...*nl.RtAttr) []byte {
	msg := (&nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: ifindex, Handle: handle, Parent: parent, Info: info}).Serialize()
	for _, a := range attrs {
		msg = append(msg, a.Serialize()...)
	}
	return msg
}

func u32Options(ifindex uint32) *nl.RtAttr {
	opts := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	sel := &nl.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Nkeys: 1, Keys: []nl.TcU32Key{{}}}
	opts.AddRtAttr(nl.TCA_U32_SEL, sel.Serialize())
	opts.AddRtAttr(nl.TCA_U32_CLASSID, nl.Uint32Attr(netlink.MakeHandle(1, 1)))
	opts.AddRtAttr(nl.TCA_U32_PCNT, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	opts.AddRtAttr(nl.TCA_U32_MARK, append(append(nl.Uint32Attr(0x10), nl.Uint32Attr(0xff)...), nl.Uint32Attr(99)...))
	acts := opts.AddRtAttr(nl.TCA_U32_ACT, nil)
	act := acts.AddRtAttr(1, nil)
	act.AddRtAttr(nl.TCA_ACT_KIND, nl.ZeroTerminated("mirred"))
	aopts := act.AddRtAttr(nl.TCA_ACT_OPTIONS, nil)
	aopts.AddRtAttr(tcaMirredTM, make([]byte, 32))
	parms := &nl.TcMirred{TcGen: nl.TcGen{Index: 7, Action: int32(netlink.TC_ACT_STOLEN), Refcnt: 1, Bindcnt: 1}, Eaction: tcaEgressRedir, Ifindex: ifindex}
	aopts.AddRtAttr(tcaMirredParms, parms.Serialize())
	act.AddRtAttr(nl.TCA_ACT_STATS, make([]byte, 16))
	other := acts.AddRtAttr(2, nil)
	other.AddRtAttr(nl.TCA_ACT_KIND, nl.ZeroTerminated("gact"))
	gopts := other.AddRtAttr(nl.TCA_ACT_OPTIONS, nil)
	gopts.AddRtAttr(1, make([]byte, 32)) // timestamps
	gopts.AddRtAttr(2, []byte{0xaa, 0xbb})
	return opts
}

func names(i int) string {
	if i == 4 {
		return "dm0"
	}
	return fmt.Sprintf("if%d", i)
}

func TestRenderFilter(t *testing.T) {
	info := uint32(FilterPriority)<<16 | uint32(nl.Swap16(unix.ETH_P_ALL))
	msg := tcMessage(3, 0x80000000|FilterNodeQdiscAdded, netlink.HANDLE_MIN_INGRESS, info,
		nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("u32")),
		nl.NewRtAttr(nl.TCA_CHAIN, nl.Uint32Attr(0)),
		u32Options(4),
		nl.NewRtAttr(nl.TCA_STATS2, make([]byte, 20)),
		nl.NewRtAttr(nl.TCA_XSTATS, make([]byte, 8)),
	)
	o, err := parseTC(msg, false)
	if err != nil {
		t.Fatal(err)
	}
	got := o.render(names)
	want := "filter parent ffff:fff2 prio 22099 proto 0x0003 kind u32 handle 800:0:56b chain 0 options{" +
		"sel=0100010000000000000000000000000000000000000000000000000000000000 classid=1:1 mark=0x10/0xff act[" +
		"1:mirred {index=7 capab=0 action=stolen refcnt=1 bindcnt=1 egress-redirect dev dm0} " +
		"2:gact {attr2=aabb}]}"
	if got != want {
		t.Errorf("render:\n got %s\nwant %s", got, want)
	}

	// Counters and timestamps do not show: a filter that saw traffic dumps
	// the same.
	busy := tcMessage(3, 0x80000000|FilterNodeQdiscAdded, netlink.HANDLE_MIN_INGRESS, info,
		nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("u32")),
		nl.NewRtAttr(nl.TCA_CHAIN, nl.Uint32Attr(0)),
		u32Options(4),
		nl.NewRtAttr(nl.TCA_STATS2, []byte("twenty bytes of stat")),
	)
	ob, err := parseTC(busy, false)
	if err != nil {
		t.Fatal(err)
	}
	if ob.render(names) != got {
		t.Errorf("statistics changed the dump:\n%s\n%s", ob.render(names), got)
	}
}

func TestRenderQdisc(t *testing.T) {
	tests := []struct {
		name  string
		msg   []byte
		want  string
		filts []uint32
	}{
		{"ingress", tcMessage(3, netlink.MakeHandle(0xffff, 0), netlink.HANDLE_INGRESS, 2, nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("ingress"))),
			"qdisc ingress handle ffff:0 parent ffff:fff1", []uint32{netlink.MakeHandle(0xffff, 0)}},
		{"clsact", tcMessage(3, netlink.MakeHandle(0xffff, 0), netlink.HANDLE_INGRESS, 2, nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("clsact"))),
			"qdisc clsact handle ffff:0 parent ffff:fff1", []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS}},
		{"noqueue root", tcMessage(3, 0, netlink.HANDLE_ROOT, 2, nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("noqueue"))),
			"qdisc noqueue handle 0:0 parent root", nil},
		{"handle the kernel picked", tcMessage(3, netlink.MakeHandle(0x8035, 0), netlink.HANDLE_ROOT, 2, nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("noqueue"))),
			"qdisc noqueue handle auto parent root", []uint32{netlink.MakeHandle(0x8035, 0)}},
		{"handle an operator picked", tcMessage(3, netlink.MakeHandle(0x10, 0), netlink.HANDLE_ROOT, 2, nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("prio"))),
			"qdisc prio handle 10:0 parent root", []uint32{netlink.MakeHandle(0x10, 0)}},
		{"pfifo_fast with options", tcMessage(3, 0, netlink.HANDLE_ROOT, 2, nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("pfifo_fast")), nl.NewRtAttr(nl.TCA_OPTIONS, []byte{3, 0})),
			"qdisc pfifo_fast handle 0:0 parent root options{0300}", nil},
	}
	for _, tt := range tests {
		o, err := parseTC(tt.msg, true)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := o.render(names); got != tt.want {
			t.Errorf("%s: render = %q, want %q", tt.name, got, tt.want)
		}
		if got := o.filterParents(); fmt.Sprint(got) != fmt.Sprint(tt.filts) {
			t.Errorf("%s: filter parents = %x, want %x", tt.name, got, tt.filts)
		}
	}
}

func TestParseTCRejectsGarbage(t *testing.T) {
	if _, err := parseTC(make([]byte, 10), false); !errors.Is(err, errShortMessage) {
		t.Errorf("short message: %v", err)
	}
	bad := append(tcMessage(1, 0, 0, 0), 0xff, 0xff, 0, 0)
	if _, err := parseTC(bad, false); err == nil {
		t.Error("an attribute longer than the message was accepted")
	}
	o, err := parseTC(tcMessage(1, 0, 0, 0, nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("u32")), nl.NewRtAttr(nl.TCA_OPTIONS, []byte{0xff, 0xff, 1, 0})), false)
	if err != nil {
		t.Fatal(err)
	}
	if got := o.render(names); !strings.Contains(got, "malformed:") {
		t.Errorf("malformed options rendered as %q", got)
	}
}

func FuzzParseTC(f *testing.F) {
	info := uint32(FilterPriority)<<16 | uint32(nl.Swap16(unix.ETH_P_ALL))
	f.Add(tcMessage(3, 0x800056a, netlink.HANDLE_MIN_INGRESS, info, nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("u32")), u32Options(4)), false)
	f.Add(tcMessage(3, 0xffff0000, netlink.HANDLE_INGRESS, 1, nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("ingress"))), true)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, msg []byte, isQdisc bool) {
		o, err := parseTC(msg, isQdisc)
		if err != nil {
			return
		}
		first := o.render(names)
		if o.render(names) != first {
			t.Fatal("rendering is not deterministic")
		}
		o.filterParents()
	})
}
