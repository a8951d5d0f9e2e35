package sriov_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/vsagent/vsagent/sriov"
	"github.com/vsagent/vsagent/sriov/sriovtest"
)

// e810 is the E810 table with a fake PF driver behind its netdev.
func e810(t *testing.T) (*sriov.Host, *sriovtest.Netlink, sriov.PF) {
	t.Helper()
	h := hostOn(t, "e810-legacy", nil)
	nl := sriovtest.NewNetlink()
	nl.AddPF("ens1f0", 3)
	h.Netlink = nl
	h.MACRetryDelay = time.Millisecond
	pf, err := h.PFByNetdev("ens1f0")
	if err != nil {
		t.Fatal(err)
	}
	return h, nl, pf
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestConfigureVF(t *testing.T) {
	full := sriov.VFConfig{
		VLAN: &sriov.VLAN{ID: 100, QoS: 3}, MAC: mac("52:54:00:aa:bb:01"), Rate: &sriov.Rate{MinMbps: 100, MaxMbps: 1000},
		SpoofCheck: sriov.ToggleOff, Trust: sriov.ToggleOn, LinkState: sriov.LinkStateEnable,
	}
	tests := []struct {
		name    string
		cfg     sriov.VFConfig
		setup   func(*sriovtest.Netlink)
		want    []string
		wantErr error
	}{
		{
			name: "every setting, in the fixed order",
			cfg:  full,
			want: []string{
				"ip link set ens1f0 vf 1 vlan 100 qos 3",
				"ip link set ens1f0 vf 1 mac 52:54:00:aa:bb:01",
				"ip link set ens1f0 vf 1 min_tx_rate 100 max_tx_rate 1000",
				"ip link set ens1f0 vf 1 spoofchk off",
				"ip link set ens1f0 vf 1 trust on",
				"ip link set ens1f0 vf 1 state enable",
			},
		},
		{
			name: "only what is named",
			cfg:  sriov.VFConfig{Trust: sriov.ToggleOn, VLAN: &sriov.VLAN{}},
			want: []string{"ip link set ens1f0 vf 1 vlan 0 qos 0", "ip link set ens1f0 vf 1 trust on"},
		},
		{
			name:  "a MAC lost during a VF reset is written again",
			cfg:   sriov.VFConfig{MAC: mac("52:54:00:aa:bb:01")},
			setup: func(nl *sriovtest.Netlink) { nl.LoseMACWrites = 2 },
			want:  []string{"ip link set ens1f0 vf 1 mac 52:54:00:aa:bb:01", "ip link set ens1f0 vf 1 mac 52:54:00:aa:bb:01", "ip link set ens1f0 vf 1 mac 52:54:00:aa:bb:01"},
		},
		{
			name:    "a MAC that never sticks",
			cfg:     sriov.VFConfig{MAC: mac("52:54:00:aa:bb:01"), Trust: sriov.ToggleOn},
			setup:   func(nl *sriovtest.Netlink) { nl.LoseMACWrites = 100 },
			want:    strings.Split(strings.Repeat("ip link set ens1f0 vf 1 mac 52:54:00:aa:bb:01\n", 3), "\n")[:3],
			wantErr: sriov.ErrMACNotApplied,
		},
		{
			name:    "a driver without trust stops the sequence there",
			cfg:     full,
			setup:   func(nl *sriovtest.Netlink) { nl.WithoutTrust("ens1f0") },
			want:    []string{"ip link set ens1f0 vf 1 vlan 100 qos 3", "ip link set ens1f0 vf 1 mac 52:54:00:aa:bb:01", "ip link set ens1f0 vf 1 min_tx_rate 100 max_tx_rate 1000", "ip link set ens1f0 vf 1 spoofchk off", "ip link set ens1f0 vf 1 trust on"},
			wantErr: unix.EOPNOTSUPP,
		},
		{
			name:    "a bad VLAN is refused before any call",
			cfg:     sriov.VFConfig{VLAN: &sriov.VLAN{ID: 4096}, Trust: sriov.ToggleOn},
			wantErr: sriov.ErrInvalid,
		},
		{
			name:    "a multicast MAC is refused before any call",
			cfg:     sriov.VFConfig{MAC: net.HardwareAddr{1, 2, 3}},
			wantErr: sriov.ErrInvalid,
		},
		{
			name:    "the kernel refuses a multicast MAC",
			cfg:     sriov.VFConfig{MAC: mac("01:00:5e:00:00:01")},
			want:    []string{"ip link set ens1f0 vf 1 mac 01:00:5e:00:00:01"},
			wantErr: unix.EINVAL,
		},
		{
			name:    "minimum above maximum",
			cfg:     sriov.VFConfig{Rate: &sriov.Rate{MinMbps: 10, MaxMbps: 5}},
			wantErr: sriov.ErrInvalid,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, nl, pf := e810(t)
			h.MACAttempts = 3
			if tt.setup != nil {
				tt.setup(nl)
			}
			before := nl.VF("ens1f0", 0)
			err := h.ConfigureVF(context.Background(), pf, 1, tt.cfg)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("ConfigureVF: %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, nl.Calls()); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			if err == nil && !tt.cfg.Satisfied(nl.VF("ens1f0", 1)) {
				t.Errorf("VF 1 is %+v, want %s", nl.VF("ens1f0", 1), tt.cfg)
			}
			if diff := cmp.Diff(before, nl.VF("ens1f0", 0)); diff != "" {
				t.Errorf("VF 0 changed (-before +after):\n%s", diff)
			}
		})
	}
}

func TestConfigureVFOutOfRange(t *testing.T) {
	h, nl, pf := e810(t)
	for _, vf := range []int{-1, 3} {
		if err := h.ConfigureVF(context.Background(), pf, vf, sriov.VFConfig{Trust: sriov.ToggleOn}); !errors.Is(err, sriov.ErrInvalid) {
			t.Errorf("VF %d: %v, want ErrInvalid", vf, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.ConfigureVF(ctx, pf, 0, sriov.VFConfig{Trust: sriov.ToggleOn}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if c := nl.Calls(); len(c) != 0 {
		t.Errorf("calls made: %q", c)
	}
}

// TestRestoreFromSettings is the round trip a revert makes: record the
// settings, change them, restore them with exactly the calls needed.
func TestRestoreFromSettings(t *testing.T) {
	h, nl, pf := e810(t)
	ctx := context.Background()
	prior := sriov.VFSettings{Index: 2, MAC: mac("52:54:00:00:00:02"), VLAN: sriov.VLAN{ID: 10, QoS: 5}, Rate: sriov.Rate{MaxMbps: 500},
		SpoofCheck: sriov.ToggleOn, Trust: sriov.ToggleOff, LinkState: sriov.LinkStateDisable}
	nl.SetVF("ens1f0", prior)
	got, err := h.VFSettings(pf, 2)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(prior, got); diff != "" {
		t.Fatalf("VFSettings (-want +got):\n%s", diff)
	}
	if err := h.ConfigureVF(ctx, pf, 2, sriov.VFConfig{VLAN: &sriov.VLAN{ID: 3802}, Trust: sriov.ToggleOn, SpoofCheck: sriov.ToggleOn}); err != nil {
		t.Fatal(err)
	}
	nl.Calls()
	now, _ := h.VFSettings(pf, 2)
	restore := got.Config().Changes(now)
	if diff := cmp.Diff("vlan 10 qos 5 trust off", restore.String()); diff != "" {
		t.Errorf("restoring changes (-want +got):\n%s", diff)
	}
	if err := h.ConfigureVF(ctx, pf, 2, restore); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"ip link set ens1f0 vf 2 vlan 10 qos 5", "ip link set ens1f0 vf 2 trust off"}, nl.Calls()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(prior, nl.VF("ens1f0", 2)); diff != "" {
		t.Errorf("after restoring (-want +got):\n%s", diff)
	}
	if !got.Config().Changes(nl.VF("ens1f0", 2)).Empty() {
		t.Error("a restored VF still needs changes")
	}
	if _, err := h.VFSettings(pf, 7); !errors.Is(err, sriov.ErrNotFound) {
		t.Errorf("VFSettings of a missing VF: %v", err)
	}
}

// fakeKernel answers writes to a fake sriov_numvfs the way the PCI core
// does: it creates or removes the virtfnN links (after a delay, as the
// write would block) and keeps the count. It runs until the test ends.
func fakeKernel(t *testing.T, root, pfAddr string, writes chan<- int) {
	t.Helper()
	dir := filepath.Join(root, "bus", "pci", "devices", pfAddr)
	path := filepath.Join(dir, "sriov_numvfs")
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(done); <-stopped })
	last, _ := os.ReadFile(path)
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			b, err := os.ReadFile(path)
			if err != nil || string(b) == string(last) {
				continue
			}
			last = b
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				continue
			}
			writes <- n
			for i := 0; i < 256; i++ {
				link := filepath.Join(dir, "virtfn"+strconv.Itoa(i))
				if i < n {
					_ = os.Symlink("../0000:3b:01."+strconv.Itoa(i), link)
				} else {
					_ = os.Remove(link)
				}
			}
		}
	}()
}

func TestSetNumVFs(t *testing.T) {
	h, _, pf := e810(t)
	writes := make(chan int, 8)
	fakeKernel(t, h.SysRoot, pf.Address, writes)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if err := h.SetNumVFs(ctx, pf, 3); err != nil {
		t.Fatal(err)
	}
	if err := h.SetNumVFs(ctx, pf, 5); err != nil {
		t.Fatal(err)
	}
	// Non-zero to non-zero goes through zero.
	for _, want := range []int{0, 5} {
		if got := <-writes; got != want {
			t.Errorf("the kernel saw %d, want %d", got, want)
		}
	}
	pf, err := h.PF(pf.Address)
	if err != nil {
		t.Fatal(err)
	}
	if pf.NumVFs != 5 || len(pf.VFs) != 5 {
		t.Errorf("after SetNumVFs(5): %d VFs, %d links", pf.NumVFs, len(pf.VFs))
	}
	if err := h.SetNumVFs(ctx, pf, 0); err != nil {
		t.Fatal(err)
	}
	if got := <-writes; got != 0 {
		t.Errorf("the kernel saw %d, want 0", got)
	}
	if pf, _ = h.PF(pf.Address); len(pf.VFs) != 0 {
		t.Errorf("VFs left: %+v", pf.VFs)
	}
	if err := h.SetNumVFs(ctx, pf, 129); !errors.Is(err, sriov.ErrInvalid) {
		t.Errorf("more than sriov_totalvfs: %v", err)
	}
}

// TestSetNumVFsBlocked: sriov_numvfs is a FIFO nobody reads, so the
// attribute blocks like one whose device is busy resetting; the call must
// give up at its timeout rather than hang.
func TestSetNumVFsBlocked(t *testing.T) {
	tree, err := sriovtest.LoadTree("e810-legacy")
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range tree.Entries {
		if strings.HasSuffix(e.Path, "/0000:3b:00.0/sriov_numvfs") {
			tree.Entries[i] = sriovtest.Entry{Kind: sriovtest.KindFIFO, Path: e.Path, Line: e.Line}
		}
	}
	root := t.TempDir()
	if err := tree.Materialize(root, nil); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(root, "bus", "pci", "devices", "0000:3b:00.0", "sriov_numvfs")
	// Unblock the goroutine the call leaves behind.
	t.Cleanup(func() {
		if f, err := os.OpenFile(fifo, os.O_RDWR, 0); err == nil {
			f.Close()
		}
	})
	h := &sriov.Host{SysRoot: root, NumVFsTimeout: 200 * time.Millisecond, Logger: sriovtest.Logger(t)}
	pf := sriov.PF{Address: "0000:3b:00.0", TotalVFs: 128}
	err = h.SetNumVFs(context.Background(), pf, 4)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SetNumVFs on a blocked attribute: %v, want a deadline error", err)
	}
}
