package vmimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// smallArchive is an uncompressed newc archive made by the package's
// writer: a directory, a file with content, a symlink and a device.
func smallArchive(t testing.TB) []byte {
	t.Helper()
	var buf bytes.Buffer
	cw := &cpioWriter{w: &buf}
	for _, e := range []struct {
		name string
		e    *entry
	}{
		{"etc", &entry{mode: modeDir | 0o755}},
		{"etc/motd", &entry{mode: modeFile | 0o644, content: "hello appliance\n"}},
		{"init", &entry{mode: modeFile | 0o755, content: "#!/bin/sh\n"}},
		{"bin/sh", &entry{mode: modeSymlink | 0o777, content: "/bin/busybox"}},
		{"dev/null", &entry{mode: modeChar | 0o600, rmajor: 1, rmin: 3}},
	} {
		if err := cw.add(e.name, e.e); err != nil {
			t.Fatal(err)
		}
	}
	if err := cw.trailer(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type walked struct {
	Name    string
	Mode    uint32
	Size    int64
	Content string
}

func walkAll(r io.Reader) ([]walked, error) {
	var got []walked
	err := WalkInitramfs(r, func(e Entry, data io.Reader) error {
		b, err := io.ReadAll(data)
		got = append(got, walked{e.Name, e.Mode, e.Size, string(b)})
		return err
	})
	return got, err
}

func TestWalkInitramfs(t *testing.T) {
	raw := smallArchive(t)
	want := []walked{
		{"etc", modeDir | 0o755, 0, ""},
		{"etc/motd", modeFile | 0o644, 16, "hello appliance\n"},
		{"init", modeFile | 0o755, 10, "#!/bin/sh\n"},
		{"bin/sh", modeSymlink | 0o777, 12, "/bin/busybox"},
		{"dev/null", modeChar | 0o600, 0, ""},
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	for name, in := range map[string][]byte{"plain": raw, "gzip": gz.Bytes()} {
		got, err := walkAll(bytes.NewReader(in))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}

	// fn may leave data unread and may stop the walk.
	stop := errors.New("stop")
	n := 0
	err := WalkInitramfs(bytes.NewReader(raw), func(e Entry, _ io.Reader) error {
		if n++; e.Name == "init" {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 3 {
		t.Errorf("stopping at init: %v after %d entries", err, n)
	}
}

func TestWalkInitramfsRejects(t *testing.T) {
	raw := smallArchive(t)
	badMagic := bytes.Clone(raw)
	copy(badMagic, "070707")
	badHex := bytes.Clone(raw)
	badHex[10] = 'g'
	longName := bytes.Clone(raw)
	copy(longName[6+8*11:], "00002000") // name length field of the first entry
	noNUL := bytes.Clone(raw)
	noNUL[cpioHeaderLen+3] = 'x' // "etc\0" → "etcx"
	tests := map[string][]byte{
		"empty":           nil,
		"header cut":      raw[:50],
		"name cut":        raw[:cpioHeaderLen+2],
		"data cut":        raw[:len(raw)/2],
		"no trailer":      raw[:len(raw)-cpioHeaderLen-12],
		"bad magic":       badMagic,
		"bad hex":         badHex,
		"name too long":   longName,
		"unterminated":    noNUL,
		"gzip garbage":    {0x1f, 0x8b, 0x08, 0x00, 0x01},
		"not cpio at all": bytes.Repeat([]byte("x"), 200),
	}
	for name, in := range tests {
		if _, err := walkAll(bytes.NewReader(in)); !errors.Is(err, ErrBadArchive) {
			t.Errorf("%s: %v, want ErrBadArchive", name, err)
		}
	}
}

// The reader agrees with the system's cpio on a real image.
func TestWalkInitramfsMatchesCpio(t *testing.T) {
	requireBusybox(t)
	out := filepath.Join(t.TempDir(), "initrd")
	if err := BuildInitramfs(context.Background(), out, nil, "#!/bin/sh\n"); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := walkAll(f)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range got {
		names = append(names, e.Name)
	}
	var want []string
	for name := range listArchive(t, out) {
		want = append(want, name)
	}
	sort.Strings(names)
	sort.Strings(want)
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("entries (-cpio +WalkInitramfs):\n%s", diff)
	}
}

func FuzzWalkInitramfs(f *testing.F) {
	raw := smallArchive(f)
	f.Add(raw)
	f.Add(raw[:len(raw)/2])
	f.Add([]byte("070701"))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	f.Add(gz.Bytes())
	f.Fuzz(func(t *testing.T, in []byte) {
		var total int64
		err := WalkInitramfs(bytes.NewReader(in), func(e Entry, data io.Reader) error {
			n, err := io.Copy(io.Discard, data)
			total += n
			if n > e.Size {
				t.Fatalf("entry %q yielded %d bytes, header says %d", e.Name, n, e.Size)
			}
			return err
		})
		if err != nil && !errors.Is(err, ErrBadArchive) {
			t.Fatalf("error %v is not an ErrBadArchive", err)
		}
		if err == nil && total > int64(len(in))*1100 {
			t.Fatalf("%d bytes of content from %d bytes of input", total, len(in))
		}
	})
}
