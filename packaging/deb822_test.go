package packaging

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The tests read two deb822 formats (Debian policy 5.1): a .deb's control
// file, and apt's .sources files, from which the test derives the Debian
// mirror this machine already uses.

var errDeb822 = errors.New("deb822")

// paragraph is one deb822 stanza: field names folded to lower case (they
// are case-insensitive), continuation lines joined with "\n".
type paragraph map[string]string

func parseDeb822(data []byte) ([]paragraph, error) {
	var out []paragraph
	var cur paragraph
	var last string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), " \t\r")
		switch {
		case strings.HasPrefix(line, "#"):
			continue
		case line == "":
			if cur != nil {
				out = append(out, cur)
			}
			cur, last = nil, ""
		case line[0] == ' ' || line[0] == '\t':
			if last == "" {
				return nil, fmt.Errorf("%w: line %d: continuation line without a field", errDeb822, n)
			}
			cur[last] += "\n" + strings.TrimSpace(line)
		default:
			name, value, ok := strings.Cut(line, ":")
			if !ok || name == "" || strings.ContainsAny(name, " \t") {
				return nil, fmt.Errorf("%w: line %d: want \"Field: value\", got %q", errDeb822, n, line)
			}
			if cur == nil {
				cur = paragraph{}
			}
			last = strings.ToLower(name)
			if _, dup := cur[last]; dup {
				return nil, fmt.Errorf("%w: line %d: field %s given twice", errDeb822, n, name)
			}
			cur[last] = strings.TrimSpace(value)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", errDeb822, err)
	}
	if cur != nil {
		out = append(out, cur)
	}
	return out, nil
}

// aptSource is one apt repository entry, from either source format.
type aptSource struct {
	URIs, Suites, Components []string
}

// parseDeb822Sources reads a .sources file. Entries that are disabled or
// carry no binary packages are left out.
func parseDeb822Sources(data []byte) ([]aptSource, error) {
	paras, err := parseDeb822(data)
	if err != nil {
		return nil, err
	}
	var out []aptSource
	for _, p := range paras {
		if !slices.Contains(strings.Fields(p["types"]), "deb") || strings.EqualFold(p["enabled"], "no") {
			continue
		}
		s := aptSource{URIs: strings.Fields(p["uris"]), Suites: strings.Fields(p["suites"]), Components: strings.Fields(p["components"])}
		if len(s.URIs) > 0 && len(s.Suites) > 0 {
			out = append(out, s)
		}
	}
	return out, nil
}

// parseSourcesList reads the one-line format of sources.list:
// "deb [options] URI SUITE [COMPONENT...]". Lines it does not understand
// are left out, as apt would refuse them anyway.
func parseSourcesList(data []byte) []aptSource {
	var out []aptSource
	for _, line := range strings.Split(string(data), "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			// Options may contain spaces: skip to the field that closes them.
			end := slices.IndexFunc(f, func(s string) bool { return strings.HasSuffix(s, "]") })
			if end < 0 {
				continue
			}
			f = f[end+1:]
		}
		if len(f) < 2 {
			continue
		}
		out = append(out, aptSource{URIs: f[:1], Suites: f[1:2], Components: f[2:]})
	}
	return out
}

// mirrorEnv overrides the Debian mirror the tests bootstrap from.
const mirrorEnv = "VSAGENT_DEBIAN_MIRROR"

// debianMirror returns $VSAGENT_DEBIAN_MIRROR, else the first apt source
// of this machine (under etcApt) that serves suite's main component.
func debianMirror(etcApt, suite string) (string, error) {
	if m := os.Getenv(mirrorEnv); m != "" {
		return m, nil
	}
	var sources []aptSource
	if data, err := os.ReadFile(filepath.Join(etcApt, "sources.list")); err == nil {
		sources = append(sources, parseSourcesList(data)...)
	}
	for _, pattern := range []string{"*.list", "*.sources"} {
		files, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", pattern))
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				return "", err
			}
			if strings.HasSuffix(file, ".list") {
				sources = append(sources, parseSourcesList(data)...)
				continue
			}
			s, err := parseDeb822Sources(data)
			if err != nil {
				return "", fmt.Errorf("%s: %w", file, err)
			}
			sources = append(sources, s...)
		}
	}
	for _, s := range sources {
		if slices.Contains(s.Suites, suite) && slices.Contains(s.Components, "main") {
			return s.URIs[0], nil
		}
	}
	return "", fmt.Errorf("no apt source under %s serves %s main; set %s", etcApt, suite, mirrorEnv)
}

func TestParseDeb822(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []paragraph
		err  bool
	}{
		{name: "empty"},
		{
			name: "control",
			in:   "Package: vsagent\nDepends: libvirt0,\n iproute2\nDescription: one\n two\n .\n",
			want: []paragraph{{"package": "vsagent", "depends": "libvirt0,\niproute2", "description": "one\ntwo\n."}},
		},
		{
			name: "paragraphs and comments",
			in:   "# c\nTypes: deb\n\n\n#x\nTypes: deb-src\nURIs: http://a/\n",
			want: []paragraph{{"types": "deb"}, {"types": "deb-src", "uris": "http://a/"}},
		},
		{name: "leading continuation", in: " x\n", err: true},
		{name: "no colon", in: "Types deb\n", err: true},
		{name: "space in name", in: "Ty pes: deb\n", err: true},
		{name: "duplicate field", in: "Types: deb\ntypes: deb\n", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDeb822([]byte(tt.in))
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error %v", err, tt.err)
			}
			if err != nil && !errors.Is(err, errDeb822) {
				t.Errorf("error %v does not wrap errDeb822", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestDebianMirror(t *testing.T) {
	t.Setenv(mirrorEnv, "")
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{
			name: "deb822, disabled and source entries skipped",
			files: map[string]string{
				"sources.list.d/a.sources": "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n" +
					"Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n" +
					"Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n" +
					"Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\n",
				"sources.list.d/b.list.disabled": "deb http://ignored.example/debian bookworm main\n",
			},
			want: "http://mirror.example/debian",
		},
		{
			name: "one-line format with options",
			files: map[string]string{
				"sources.list": "# deb http://commented.example/debian bookworm main\n" +
					"deb http://other.example/debian bookworm contrib\n" +
					"deb [ arch=amd64 signed-by=/k.gpg ] http://mirror.example/debian bookworm main # trailing\n",
			},
			want: "http://mirror.example/debian",
		},
		{
			name:  "none",
			files: map[string]string{"sources.list": "deb http://old.example/debian bullseye main\n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, data := range tt.files {
				path := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := debianMirror(dir, "bookworm")
			if tt.want == "" {
				if err == nil {
					t.Fatalf("got %q, want an error", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	t.Run("override", func(t *testing.T) {
		t.Setenv(mirrorEnv, "http://override.example/debian")
		if got, err := debianMirror(t.TempDir(), "bookworm"); err != nil || got != "http://override.example/debian" {
			t.Fatalf("got %q, %v", got, err)
		}
	})
}

func FuzzParseAptSources(f *testing.F) {
	for _, seed := range []string{
		"Types: deb\nURIs: http://a/debian\nSuites: bookworm\nComponents: main\n",
		"Package: vsagent\nDescription: x\n y\n",
		"deb [arch=amd64] http://a/debian bookworm main\n",
		"deb [ arch=amd64 http://a/debian bookworm\n",
		"deb\n deb x\n\x00:\n",
		" :\n:\nA:\n B\n\n\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, s := range parseSourcesList(data) {
			if len(s.URIs) != 1 || len(s.Suites) != 1 {
				t.Fatalf("one-line entry %+v: want one URI and one suite", s)
			}
		}
		paras, err := parseDeb822(data)
		if err != nil {
			if !errors.Is(err, errDeb822) {
				t.Fatalf("error %v does not wrap errDeb822", err)
			}
			return
		}
		for _, p := range paras {
			if len(p) == 0 {
				t.Fatal("empty paragraph")
			}
		}
		sources, err := parseDeb822Sources(data)
		if err != nil {
			t.Fatalf("parseDeb822 accepted what parseDeb822Sources refused: %v", err)
		}
		for _, s := range sources {
			if len(s.URIs) == 0 || len(s.Suites) == 0 {
				t.Fatalf("entry %+v without URI or suite", s)
			}
		}
	})
}
