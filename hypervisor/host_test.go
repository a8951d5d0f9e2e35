package hypervisor

import (
	"errors"
	"fmt"
	"regexp"
	"testing"

	"libvirt.org/go/libvirt"
)

const capsWithUUID = `<capabilities><host><uuid>9F3C1E2A-55B4-4C1D-9E8F-0A1B2C3D4E5F</uuid><cpu><arch>x86_64</arch></cpu></host></capabilities>`
const capsWithoutUUID = `<capabilities><host><cpu><arch>x86_64</arch></cpu></host></capabilities>`

func sysinfoWith(uuid string) string {
	return fmt.Sprintf(`<sysinfo type='smbios'><system><entry name='manufacturer'>QEMU</entry><entry name='uuid'>%s</entry></system></sysinfo>`, uuid)
}

func TestHostUUIDFrom(t *testing.T) {
	tests := []struct {
		name    string
		caps    string
		sysinfo string
		want    string
		wantErr error
	}{
		{"capabilities win", capsWithUUID, sysinfoWith("11111111-2222-3333-4444-555555555555"), "9f3c1e2a-55b4-4c1d-9e8f-0a1b2c3d4e5f", nil},
		{"sysinfo fallback", capsWithoutUUID, sysinfoWith("11111111-2222-3333-4444-555555555555"), "11111111-2222-3333-4444-555555555555", nil},
		{"sysinfo without dashes", capsWithoutUUID, sysinfoWith(" 11111111222233334444555555555555\n"), "11111111-2222-3333-4444-555555555555", nil},
		{"placeholder uuid ignored", capsWithoutUUID, sysinfoWith("00000000-0000-0000-0000-000000000000"), "", ErrNoHostUUID},
		{"garbage uuid ignored", capsWithoutUUID, sysinfoWith("not-a-uuid"), "", ErrNoHostUUID},
		{"no sysinfo", capsWithoutUUID, "", "", ErrNoHostUUID},
		{"bios-only sysinfo", capsWithoutUUID, `<sysinfo type='smbios'><bios><entry name='vendor'>X</entry></bios></sysinfo>`, "", ErrNoHostUUID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := hostUUIDFrom(tt.caps, tt.sysinfo)
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Fatalf("got %q, %v; want %q, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
	if _, err := hostUUIDFrom("<capabilities><host>", ""); err == nil || errors.Is(err, ErrNoHostUUID) {
		t.Fatalf("truncated capabilities: %v, want a decode error", err)
	}
}

var canonicalUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func FuzzHostUUIDFrom(f *testing.F) {
	f.Add(capsWithUUID, "")
	f.Add(capsWithoutUUID, sysinfoWith("11111111-2222-3333-4444-555555555555"))
	f.Add(capsWithoutUUID, sysinfoWith("1111"))
	f.Add("<capabilities><host><uuid>", "<sysinfo")
	f.Add("", "")
	f.Add("<capabilities><host><uuid>----</uuid></host></capabilities>", "")
	f.Fuzz(func(t *testing.T, caps, sysinfo string) {
		got, err := hostUUIDFrom(caps, sysinfo)
		if err != nil {
			if got != "" {
				t.Fatalf("error %v with result %q", err, got)
			}
			return
		}
		if !canonicalUUID.MatchString(got) {
			t.Fatalf("non-canonical uuid %q", got)
		}
		if again, ok := normalizeUUID(got); !ok || again != got {
			t.Fatalf("normalizeUUID(%q) = %q, %v", got, again, ok)
		}
	})
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"no domain", libvirt.Error{Code: libvirt.ERR_NO_DOMAIN, Message: "Domain not found"}, ErrNotFound},
		{"no metadata", libvirt.Error{Code: libvirt.ERR_NO_DOMAIN_METADATA}, ErrNoMetadata},
		{"invalid connection", libvirt.Error{Code: libvirt.ERR_INVALID_CONN}, ErrDisconnected},
		{"no connection", libvirt.Error{Code: libvirt.ERR_NO_CONNECT}, ErrDisconnected},
		{"wrapped no domain", fmt.Errorf("lookup: %w", libvirt.Error{Code: libvirt.ERR_NO_DOMAIN}), ErrNotFound},
	}
	for _, tt := range tests {
		got := classify(tt.err)
		if !errors.Is(got, tt.want) {
			t.Errorf("%s: %v is not %v", tt.name, got, tt.want)
		}
		var lerr libvirt.Error
		if !errors.As(got, &lerr) {
			t.Errorf("%s: %v lost the libvirt error", tt.name, got)
		}
	}
	other := libvirt.Error{Code: libvirt.ERR_OPERATION_INVALID}
	if got := classify(other); got != error(other) {
		t.Errorf("unrelated error changed: %v", got)
	}
	if classify(nil) != nil {
		t.Error("classify(nil) != nil")
	}
}
