package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		wantKiB uint64
		wantErr string // substring; "" means success
	}{
		{"256MiB", 256 << 10, ""},
		{"1GiB", 1 << 20, ""},
		{"512M", 512 << 10, ""},
		{"1G", 1 << 20, ""},
		{"64KiB", 64, ""},
		{"4k", 4, ""},
		{"2TiB", 2 << 30, ""},
		{"1tb", 1e12 / 1024, ""},
		{"1KB", 0, "not a whole number of KiB"},
		{"2000MB", 2000 * 1e6 / 1024, ""},
		{"1024000KB", 1000000, ""},
		{"1048576B", 1024, ""},
		{"1048576 bytes", 1024, ""},
		{"256 MiB", 256 << 10, ""},
		{"256mib", 256 << 10, ""},
		{"256", 0, "missing unit"},
		{"", 0, "use a whole number with a unit"},
		{"MiB", 0, "use a whole number with a unit"},
		{"-1MiB", 0, "use a whole number with a unit"},
		{"1.5GiB", 0, "fractions are not supported"},
		{"1PiB", 0, `unknown unit "PiB"`},
		{"256  MiB", 0, `unknown unit " MiB"`},
		{"0MiB", 0, "greater than zero"},
		{"1000B", 0, "not a whole number of KiB"},
		{"99999999999999999999MiB", 0, "number too large"},
		{"17179869184TiB", 0, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			checkErr(t, err, tt.wantErr)
			if tt.wantErr == "" && got != tt.wantKiB {
				t.Errorf("ParseSize(%q) = %d KiB, want %d", tt.in, got, tt.wantKiB)
			}
		})
	}
}

func TestFormatSize(t *testing.T) {
	for kib, want := range map[uint64]string{
		1: "1KiB", 1536: "1536KiB", 256 << 10: "256MiB", 1 << 20: "1GiB", 3 << 30: "3TiB", 1536 << 10: "1536MiB", 0: "0KiB",
	} {
		if got := FormatSize(kib); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", kib, got, want)
		}
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{"250ms", 250 * time.Millisecond, ""},
		{"2m", 2 * time.Minute, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"0s", 0, ""},
		{"1.5s", 1500 * time.Millisecond, ""},
		{"10us", 10 * time.Microsecond, ""},
		{"10µs", 10 * time.Microsecond, ""},
		{"0", 0, "use a number with a unit"},
		{"30", 0, "use a number with a unit"},
		{"", 0, "use a number with a unit"},
		{"2 minutes", 0, "use a number with a unit"},
		{"2m30", 0, "use a number with a unit"},
		{"1d", 0, "use a number with a unit"},
		{"-1s", 0, "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			checkErr(t, err, tt.wantErr)
			if tt.wantErr == "" && got != tt.want {
				t.Errorf("ParseDuration(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in      string
		want    PortRange
		wantErr string
	}{
		{"443", PortRange{443, 443}, ""},
		{"1", PortRange{1, 1}, ""},
		{"65535", PortRange{65535, 65535}, ""},
		{"1000-2000", PortRange{1000, 2000}, ""},
		{"22-22", PortRange{22, 22}, ""},
		{"1-65535", PortRange{1, 65535}, ""},
		{"0", PortRange{}, "out of range"},
		{"65536", PortRange{}, "out of range"},
		{"2000-1000", PortRange{}, "2000 is greater than 1000"},
		{"", PortRange{}, "use a port"},
		{"-", PortRange{}, "use a port"},
		{"80-", PortRange{}, "use a port"},
		{"-80", PortRange{}, "use a port"},
		{"80-90-100", PortRange{}, "use a port"},
		{" 80", PortRange{}, "use a port"},
		{"+80", PortRange{}, "use a port"},
		{"http", PortRange{}, "use a port"},
		{"0x50", PortRange{}, "use a port"},
		{"000080", PortRange{}, "use a port"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePortRange(tt.in)
			checkErr(t, err, tt.wantErr)
			if tt.wantErr == "" {
				if got != tt.want {
					t.Errorf("ParsePortRange(%q) = %v, want %v", tt.in, got, tt.want)
				}
				if !got.Contains(got.Lo) || !got.Contains(got.Hi) || got.Lo > 1 && got.Contains(got.Lo-1) {
					t.Errorf("%v.Contains is inconsistent with its bounds", got)
				}
			}
		})
	}
}

func TestParseProtocol(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"any", AnyProtocol, false},
		{"tcp", 6, false},
		{"udp", 17, false},
		{"icmp", 1, false},
		{"icmpv6", 58, false},
		{"sctp", 132, false},
		{"0", 0, false},
		{"47", 47, false},
		{"255", 255, false},
		{"256", 0, true},
		{"TCP", 0, true},
		{"", 0, true},
		{"-1", 0, true},
		{"gre", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseProtocol(tt.in)
		if (err != nil) != tt.wantErr || err == nil && got != tt.want {
			t.Errorf("ParseProtocol(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.Prefix
		wantErr string
	}{
		{"10.0.0.0/8", netip.MustParsePrefix("10.0.0.0/8"), ""},
		{"0.0.0.0/0", netip.MustParsePrefix("0.0.0.0/0"), ""},
		{"::/0", netip.MustParsePrefix("::/0"), ""},
		{"fd00::/8", netip.MustParsePrefix("fd00::/8"), ""},
		{"192.0.2.7", netip.MustParsePrefix("192.0.2.7/32"), ""},
		{"2001:db8::1", netip.MustParsePrefix("2001:db8::1/128"), ""},
		{"10.1.2.3/8", netip.Prefix{}, "did you mean 10.0.0.0/8?"},
		{"10.0.0.0/33", netip.Prefix{}, "not an IPv4 or IPv6 prefix"},
		{"fe80::1%eth0", netip.Prefix{}, "not an IPv4 or IPv6 address"},
		{"example.com", netip.Prefix{}, "not an IPv4 or IPv6 address"},
		{"", netip.Prefix{}, "not an IPv4 or IPv6 address"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePrefix(tt.in)
			checkErr(t, err, tt.wantErr)
			if diff := cmp.Diff(tt.want.String(), got.String()); tt.wantErr == "" && diff != "" {
				t.Errorf("ParsePrefix(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestCheckEtherType(t *testing.T) {
	tests := []struct {
		in      int64
		wantErr string
	}{
		{0x88B5, ""},
		{0x88B7, ""},
		{0xFFFF, ""},
		{0x0600, ""},
		{0x05FF, "802.3 lengths"},
		{-1, "not an EtherType"},
		{0x10000, "not an EtherType"},
		{0x0800, "IPv4"},
		{0x86DD, "IPv6"},
		{0x0806, "ARP"},
		{0x8100, "802.1Q"},
		{0x88A8, "802.1ad"},
		{0x88B6, "drop notice"},
	}
	for _, tt := range tests {
		checkErr(t, checkEtherType(tt.in), tt.wantErr)
	}
}

func TestCheckIfName(t *testing.T) {
	for name, ok := range map[string]bool{
		"vsa-dm0": true, "eth0": true, "a": true, "fifteen-chars-x": true,
		"": false, "sixteen-chars-xx": false, ".": false, "..": false, "a/b": false, "a:b": false, "a b": false,
	} {
		if err := checkIfName(name); (err == nil) != ok {
			t.Errorf("checkIfName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Errorf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("error %q does not contain %q", err, want)
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"256MiB", "1GiB", "512M", "1000B", "1.5GiB", "0MiB", "99999999999999999999TiB", "1 kb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		kib, err := ParseSize(s)
		if err != nil {
			return
		}
		if kib == 0 {
			t.Fatalf("ParseSize(%q) accepted zero", s)
		}
		back, err := ParseSize(FormatSize(kib))
		if err != nil || back != kib {
			t.Fatalf("ParseSize(FormatSize(%d)) = %d, %v", kib, back, err)
		}
	})
}

func FuzzParsePortRange(f *testing.F) {
	for _, s := range []string{"443", "1000-2000", "0", "65535", "65536", "2-1", "-", "1-", "00001-00002"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParsePortRange(s)
		if err != nil {
			return
		}
		if r.Lo == 0 || r.Lo > r.Hi {
			t.Fatalf("ParsePortRange(%q) = %+v", s, r)
		}
		back, err := ParsePortRange(r.String())
		if err != nil || back != r {
			t.Fatalf("ParsePortRange(%q) round trip: %+v, %v", r.String(), back, err)
		}
	})
}
