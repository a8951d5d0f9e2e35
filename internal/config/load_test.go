package config

import (
	"errors"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

const exampleDir = "../../testdata/config"

var cmpPrefix = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

// TestLoadExample loads the documented example (main file and conf.d) and
// checks every decoded value against what the files say.
func TestLoadExample(t *testing.T) {
	cfg, err := Load(filepath.Join(exampleDir, "vsagent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	main := filepath.Join(exampleDir, "vsagent.toml")
	confd := filepath.Join(exampleDir, "conf.d", "50-web.toml")
	want := &Config{
		Agent: Agent{
			LibvirtURI: "qemu:///system", GateTimeout: 2 * time.Minute, ResyncInterval: 5 * time.Minute,
			StateDir: "/var/lib/vsagent", Socket: "/run/vsagent/vsagent.sock", LogLevel: "info", HookFailure: "closed",
		},
		Dataplane: Dataplane{
			EtherType: 0x88B5, MaxHops: 16, ReturnTimeout: 250 * time.Millisecond, FlowIdleTimeout: time.Minute,
			MaxFlows: 1_000_000, Workers: 0, Port: "vsa-dm0", FastPath: true, FastPathAfter: 8,
			ProbeInterval: time.Second, ProbeTimeout: 500 * time.Millisecond, ProbeMisses: 3,
		},
		Intercept: Intercept{Backend: "tc-redirect", Uplink: "eth0"},
		Metrics:   Metrics{Listen: "127.0.0.1:9464"},
		Scaling: Scaling{
			PollInterval: 10 * time.Second, UpperCPU: 80, LowerCPU: 20, Hold: 30 * time.Second,
			Cooldown: 2 * time.Minute, HostCPUPercent: 10, HostMemoryPercent: 10,
		},
		Appliances: []Appliance{
			{
				Name: "ips", Template: "templates/ips.xml", Kind: KindHeader, VCPUs: 1, MaxVCPUs: 2,
				MemoryKiB: 256 << 10, MaxMemoryKiB: 512 << 10, MaxInstances: 2, OnFailure: FailureBlock,
				Position: Position{main, 86},
			},
			{
				Name: "fw", Template: "templates/fw.xml", Kind: KindHeader, VCPUs: 1, MaxVCPUs: 1,
				MemoryKiB: 256 << 10, MaxMemoryKiB: 256 << 10, MaxInstances: 1, OnFailure: FailureBlock,
				Position: Position{main, 105},
			},
			{
				Name: "dlp", Template: "../templates/dlp-wire.xml", Kind: KindWire, VCPUs: 2, MaxVCPUs: 4,
				MemoryKiB: 1 << 20, MaxMemoryKiB: 2 << 20, MaxInstances: 4, OnFailure: FailureBypass,
				Position: Position{confd, 5},
			},
		},
		Policies: []Policy{
			{
				Name: "protected", Chain: []string{"ips", "fw"},
				Match:     Match{Domains: []string{"demo-*", "prod-db-?"}},
				Symmetric: true, OnTimeout: OnTimeoutBlock, BlockFor: 30 * time.Second,
				Classifiers: []Classifier{
					{
						Direction: DirectionEgress, Protocol: "udp", Ports: []string{"53"},
						CIDRs: []string{"10.0.0.0/8", "fd00::/8"}, Chain: []string{"fw"},
						ProtocolNumber: 17, PortRanges: []PortRange{{53, 53}},
						Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")},
					},
					{
						Direction: DirectionBoth, Protocol: "tcp", Ports: []string{"22", "6000-6063"},
						CIDRs: []string{}, Chain: []string{"ips", "fw"},
						ProtocolNumber: 6, PortRanges: []PortRange{{22, 22}, {6000, 6063}},
					},
				},
				Position: Position{main, 111},
			},
			{
				Name: "web", Chain: []string{"fw"}, Symmetric: true, OnTimeout: OnTimeoutAlert, BlockFor: 30 * time.Second,
				Classifiers: []Classifier{
					{
						Direction: DirectionIngress, Protocol: "tcp", Ports: []string{"80", "443"}, Chain: []string{"ips", "fw"},
						ProtocolNumber: 6, PortRanges: []PortRange{{80, 80}, {443, 443}},
					},
					{
						Direction: DirectionEgress, Protocol: "tcp", Ports: []string{"443"},
						CIDRs: []string{"0.0.0.0/0", "::/0"}, Chain: []string{"dlp", "fw"},
						ProtocolNumber: 6, PortRanges: []PortRange{{443, 443}},
						Prefixes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
					},
					{Direction: DirectionBoth, Protocol: "icmp", Chain: []string{}, ProtocolNumber: 1},
				},
				Position: Position{confd, 19},
			},
		},
		Files: []string{main, confd},
	}
	ignoreTemplate := cmpopts.IgnoreFields(Appliance{}, "TemplatePath", "TemplateXML")
	if diff := cmp.Diff(want, cfg, ignoreTemplate, cmpPrefix, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("Load example (-want +got):\n%s", diff)
	}
	for _, a := range cfg.Appliances {
		wantPath, _ := filepath.Abs(filepath.Join(filepath.Dir(a.Position.File), a.Template))
		if a.TemplatePath != wantPath {
			t.Errorf("%s: TemplatePath = %q, want %q", a.Name, a.TemplatePath, wantPath)
		}
		data, err := os.ReadFile(wantPath)
		if err != nil {
			t.Fatal(err)
		}
		if a.TemplateXML != string(data) {
			t.Errorf("%s: TemplateXML is not the content of %s", a.Name, wantPath)
		}
	}
	if got, want := cfg.Summary(), "3 appliances, 2 policies, backend tc-redirect, from 2 files"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
}

// TestDefaults checks the value of every key an empty file leaves alone,
// against the documented defaults.
func TestDefaults(t *testing.T) {
	cfg, err := Parse("empty.toml", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Agent: Agent{
			LibvirtURI: "qemu:///system", GateTimeout: 2 * time.Minute, ResyncInterval: 5 * time.Minute,
			StateDir: "/var/lib/vsagent", Socket: "/run/vsagent/vsagent.sock", LogLevel: "info", HookFailure: "closed",
		},
		Dataplane: Dataplane{
			EtherType: 0x88B5, MaxHops: 16, ReturnTimeout: 250 * time.Millisecond, FlowIdleTimeout: 60 * time.Second,
			MaxFlows: 1_000_000, Workers: 0, Port: "vsa-dm0", FastPath: true, FastPathAfter: 8,
			ProbeInterval: time.Second, ProbeTimeout: 500 * time.Millisecond, ProbeMisses: 3,
		},
		Intercept: Intercept{Backend: "tc-redirect"},
		Scaling: Scaling{
			PollInterval: 10 * time.Second, UpperCPU: 80, LowerCPU: 20, Hold: 30 * time.Second,
			Cooldown: 2 * time.Minute, HostCPUPercent: 10, HostMemoryPercent: 10,
		},
		Files: []string{"empty.toml"},
	}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}

	cfg, err = Parse("min.toml", []byte("[[appliance]]\nname = \"a\"\ntemplate = \"ok.xml\"\n[[policy]]\nname = \"p\"\nchain = [\"a\"]\n[[policy.classifier]]\nchain = []\n"), "testdata/templates")
	if err != nil {
		t.Fatal(err)
	}
	wantApp := Appliance{
		Name: "a", Template: "ok.xml", Kind: KindHeader, VCPUs: 1, MaxVCPUs: 1, MemoryKiB: 256 << 10,
		MaxMemoryKiB: 256 << 10, MaxInstances: 1, OnFailure: FailureBlock, Position: Position{"min.toml", 1},
	}
	if diff := cmp.Diff(wantApp, cfg.Appliances[0], cmpopts.IgnoreFields(Appliance{}, "TemplatePath", "TemplateXML")); diff != "" {
		t.Errorf("appliance defaults (-want +got):\n%s", diff)
	}
	wantPol := Policy{
		Name: "p", Chain: []string{"a"}, Symmetric: true, OnTimeout: OnTimeoutAlert, BlockFor: 30 * time.Second,
		Classifiers: []Classifier{{Direction: DirectionBoth, Protocol: "any", ProtocolNumber: AnyProtocol, Chain: []string{}}},
		Position:    Position{"min.toml", 4},
	}
	if diff := cmp.Diff(wantPol, cfg.Policies[0], cmpPrefix); diff != "" {
		t.Errorf("policy defaults (-want +got):\n%s", diff)
	}
}

func TestDefault(t *testing.T) {
	cfg := Default()
	if got, want := cfg.Summary(), "2 appliances, 1 policy, backend tc-redirect, from 1 file"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
	for _, name := range []string{"ips", "fw"} {
		a, ok := cfg.Appliance(name)
		if !ok {
			t.Fatalf("no appliance %q", name)
		}
		if a.Kind != KindHeader || a.VCPUs != 1 || a.MemoryKiB != 128<<10 {
			t.Errorf("%s: kind %s, %d vCPUs, %s; want header, 1, 128MiB", name, a.Kind, a.VCPUs, FormatSize(a.MemoryKiB))
		}
		for _, want := range []string{"<domain type='qemu'>", "machine='q35'", "/var/lib/vsagent/images/vsa-kernel", "<interface type='ethernet'>", "<model type='virtio'/>"} {
			if !strings.Contains(a.TemplateXML, want) {
				t.Errorf("%s template lacks %q", name, want)
			}
		}
		if a.TemplatePath != "templates/"+name+".xml" {
			t.Errorf("%s: TemplatePath = %q", name, a.TemplatePath)
		}
	}
	p, ok := cfg.Policy("protected")
	if !ok {
		t.Fatal("no policy \"protected\"")
	}
	if diff := cmp.Diff([]string{"ips", "fw"}, p.Chain); diff != "" {
		t.Errorf("chain (-want +got):\n%s", diff)
	}
	for name, want := range map[string]bool{"demo-1": true, "demo-web": true, "demo": false, "prod-1": false} {
		if got := p.MatchesDomain(name); got != want {
			t.Errorf("MatchesDomain(%q) = %v, want %v", name, got, want)
		}
	}
	if _, ok := cfg.Policy("missing"); ok {
		t.Error("Policy(\"missing\") found something")
	}
	if _, ok := cfg.Appliance("missing"); ok {
		t.Error("Appliance(\"missing\") found something")
	}
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readTemplate(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "templates", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestConfD checks which conf.d files are read and in what order, and that
// their entries follow the main file's.
func TestConfD(t *testing.T) {
	ok := readTemplate(t, "ok.xml")
	dir := writeFiles(t, map[string]string{
		"vsagent.toml":             "[[policy]]\nname = \"main\"\nchain = []\n",
		"conf.d/20-b.toml":         "[[policy]]\nname = \"b\"\nchain = [\"a\"]\n",
		"conf.d/10-a.toml":         "[[appliance]]\nname = \"a\"\ntemplate = \"tmpl/a.xml\"\n[[policy]]\nname = \"a\"\nchain = [\"a\"]\n",
		"conf.d/tmpl/a.xml":        ok,
		"conf.d/.30-hidden.toml":   "not = [toml",
		"conf.d/notes.txt":         "not toml either",
		"conf.d/40-dir.toml/x.xml": ok,
	})
	cfg, err := Load(filepath.Join(dir, "vsagent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range cfg.Policies {
		names = append(names, p.Name)
	}
	if diff := cmp.Diff([]string{"main", "a", "b"}, names); diff != "" {
		t.Errorf("policy order (-want +got):\n%s", diff)
	}
	wantFiles := []string{filepath.Join(dir, "vsagent.toml"), filepath.Join(dir, "conf.d", "10-a.toml"), filepath.Join(dir, "conf.d", "20-b.toml")}
	if diff := cmp.Diff(wantFiles, cfg.Files); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	if got, want := cfg.Appliances[0].TemplatePath, filepath.Join(dir, "conf.d", "tmpl", "a.xml"); got != want {
		t.Errorf("template resolved to %q, want %q (relative to the conf.d file)", got, want)
	}
}

// TestParseFS covers an in-memory file system: conf.d inside it, and
// templates that must stay inside it.
func TestParseFS(t *testing.T) {
	ok := readTemplate(t, "ok.xml")
	fsys := fstest.MapFS{
		"etc/vsagent.toml":              {Data: []byte("[[appliance]]\nname = \"a\"\ntemplate = \"t/a.xml\"\n")},
		"etc/t/a.xml":                   {Data: []byte(ok)},
		"etc/conf.d/10-b.toml":          {Data: []byte("[[appliance]]\nname = \"b\"\ntemplate = \"../t/a.xml\"\n")},
		"etc/conf.d/20-bad.toml":        {Data: []byte("[[appliance]]\nname = \"c\"\ntemplate = \"../../../a.xml\"\n[[appliance]]\nname = \"d\"\ntemplate = \"/etc/a.xml\"\n")},
		"etc/conf.d/30-unreadable.toml": {Data: []byte("x"), Mode: fs.ModeDir},
	}
	_, err := ParseFS(fsys, "etc/vsagent.toml")
	want := strings.Join([]string{
		`etc/conf.d/20-bad.toml:3: appliance[0].template: template "../../../a.xml" points outside the configuration's directory`,
		`etc/conf.d/20-bad.toml:6: appliance[1].template: template "/etc/a.xml" must be a relative path here`,
	}, "\n")
	if err == nil {
		t.Fatal("no error")
	}
	if diff := cmp.Diff(want, err.Error()); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}

	delete(fsys, "etc/conf.d/20-bad.toml")
	cfg, err := ParseFS(fsys, "etc/vsagent.toml")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Summary(); got != "2 appliances, 0 policies, backend tc-redirect, from 2 files" {
		t.Errorf("Summary() = %q", got)
	}
	if got := cfg.Appliances[1].TemplatePath; got != "etc/t/a.xml" {
		t.Errorf("TemplatePath = %q, want the path inside the FS", got)
	}
}

// TestErrorsAPI checks that callers can take errors apart with the errors
// package, and the text of errors without a line or key.
func TestErrorsAPI(t *testing.T) {
	_, err := Load(filepath.Join("testdata", "bad", "missing_template.toml"))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 {
		t.Fatalf("errors.As(Errors) on %v failed", err)
	}
	var one *Error
	if !errors.As(err, &one) || one.Key != "appliance[0].template" || one.Line != 4 {
		t.Errorf("errors.As(*Error) = %#v", one)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Error("a missing template is not errors.Is(fs.ErrNotExist)")
	}

	_, err = Load(filepath.Join(t.TempDir(), "nope.toml"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasSuffix(err.Error(), "nope.toml: cannot read configuration: no such file or directory") {
		t.Errorf("missing main file: %v", err)
	}

	_, err = Load(filepath.Join("testdata", "bad", "syntax_error.toml"))
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		t.Errorf("a syntax error does not carry the toml.ParseError: %v", err)
	}

	for _, tt := range []struct {
		e    Error
		want string
	}{
		{Error{File: "a.toml", Line: 3, Key: "agent.x", Msg: "bad"}, "a.toml:3: agent.x: bad"},
		{Error{File: "a.toml", Key: "agent.x", Msg: "bad"}, "a.toml: agent.x: bad"},
		{Error{File: "a.toml", Line: 3, Msg: "bad"}, "a.toml:3: bad"},
		{Error{File: "a.toml", Msg: "bad"}, "a.toml: bad"},
	} {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

// TestUnusualFiles checks files that are not plain configuration: they are
// reported, never read forever.
func TestUnusualFiles(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"vsagent.toml": "[[appliance]]\nname = \"fifo\"\ntemplate = \"fifo.xml\"\n" +
			"[[appliance]]\nname = \"dir\"\ntemplate = \"adir\"\n" +
			"[[appliance]]\nname = \"big\"\ntemplate = \"big.xml\"\n",
		"adir/x": "",
	})
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.xml"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "big.xml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, "big.xml"), maxFileSize+1); err != nil {
		t.Fatal(err)
	}
	_, err := Load(filepath.Join(dir, "vsagent.toml"))
	if err == nil {
		t.Fatal("no error")
	}
	got := strings.ReplaceAll(err.Error(), dir+"/", "")
	want := strings.Join([]string{
		"vsagent.toml:3: appliance[0].template: cannot read template fifo.xml: not a regular file",
		"vsagent.toml:6: appliance[1].template: cannot read template adir: not a regular file",
		"vsagent.toml:9: appliance[2].template: cannot read template big.xml: larger than 4 MiB",
	}, "\n")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}

func TestSummaryPlurals(t *testing.T) {
	for _, tt := range []struct {
		apps, pols, files int
		want              string
	}{
		{0, 0, 1, "0 appliances, 0 policies, backend macvtap, from 1 file"},
		{1, 1, 2, "1 appliance, 1 policy, backend macvtap, from 2 files"},
		{3, 2, 2, "3 appliances, 2 policies, backend macvtap, from 2 files"},
	} {
		c := &Config{Intercept: Intercept{Backend: "macvtap"}, Appliances: make([]Appliance, tt.apps), Policies: make([]Policy, tt.pols), Files: make([]string, tt.files)}
		if got := c.Summary(); got != tt.want {
			t.Errorf("Summary() = %q, want %q", got, tt.want)
		}
	}
}

// schemaKeys loads the example with key collection on and returns the
// schema's leaf keys ("policy.classifier.ports") and the keys the example
// files set.
func schemaKeys(t *testing.T) (schema, example map[string]bool) {
	t.Helper()
	asked := make(map[string]bool)
	if _, err := load(osSource{}, filepath.Join(exampleDir, "vsagent.toml"), asked); err != nil {
		t.Fatal(err)
	}
	schema = make(map[string]bool)
	for k := range asked {
		isTable := false
		for other := range asked {
			if strings.HasPrefix(other, k+".") {
				isTable = true
			}
		}
		if !isTable {
			schema[k] = true
		}
	}
	example = make(map[string]bool)
	for _, f := range []string{"vsagent.toml", "conf.d/50-web.toml"} {
		data, err := os.ReadFile(filepath.Join(exampleDir, f))
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if _, err := toml.Decode(string(data), &m); err != nil {
			t.Fatal(err)
		}
		var paths []string
		treePaths("", m, &paths)
		for _, p := range paths {
			example[regexp.MustCompile(`\[\d+\]`).ReplaceAllString(p, "")] = true
		}
	}
	return schema, example
}

// TestExampleSetsEveryKey keeps testdata/config a complete reference: every
// key the decoder knows is set, and so commented, in the example.
func TestExampleSetsEveryKey(t *testing.T) {
	schema, example := schemaKeys(t)
	if len(schema) < 40 {
		t.Fatalf("only %d schema keys collected: %v", len(schema), slices.Sorted(maps.Keys(schema)))
	}
	for k := range schema {
		if !example[k] {
			t.Errorf("the example configuration does not set %s", k)
		}
	}
}

// TestDocsDescribeEveryKey checks that docs/configuration.md has a row for
// every key under its section's heading, and no row for a key that does
// not exist.
func TestDocsDescribeEveryKey(t *testing.T) {
	schema, _ := schemaKeys(t)
	data, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	heading := regexp.MustCompile("^### `\\[{1,2}([a-z.]+)\\]{1,2}`")
	row := regexp.MustCompile("^\\| `([a-z_]+)` \\|")
	documented := make(map[string]bool)
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		if m := heading.FindStringSubmatch(line); m != nil {
			section = m[1]
		} else if strings.HasPrefix(line, "#") {
			section = ""
		} else if m := row.FindStringSubmatch(line); m != nil && section != "" {
			documented[section+"."+m[1]] = true
		}
	}
	if diff := cmp.Diff(slices.Sorted(maps.Keys(schema)), slices.Sorted(maps.Keys(documented))); diff != "" {
		t.Errorf("keys in the schema (-) and in docs/configuration.md (+):\n%s", diff)
	}
}

// FuzzParse feeds arbitrary main files to the loader. It reads templates
// from an in-memory file system so that fuzzed paths cannot reach the
// host's files.
func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"testdata/bad/*.toml", "testdata/bad/*/vsagent.toml", "testdata/bad/*/conf.d/*.toml", exampleDir + "/vsagent.toml", exampleDir + "/conf.d/*.toml", "default/vsagent.toml"} {
		files, _ := filepath.Glob(pattern)
		for _, name := range files {
			data, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	fsys := fstest.MapFS{}
	for _, dir := range []string{"testdata/templates", "default/templates", exampleDir + "/templates"} {
		files, _ := filepath.Glob(dir + "/*.xml")
		for _, name := range files {
			data, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			// Reachable both as templates/x.xml and, from the corpus, as ../templates/x.xml.
			fsys["cfg/templates/"+filepath.Base(name)] = &fstest.MapFile{Data: data}
			fsys["templates/"+filepath.Base(name)] = &fstest.MapFile{Data: data}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		files := maps.Clone(fsys)
		files["cfg/vsagent.toml"] = &fstest.MapFile{Data: data}
		cfg, err := ParseFS(files, "cfg/vsagent.toml")
		if err != nil {
			if cfg != nil {
				t.Fatal("configuration returned with errors")
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %v is not a non-empty Errors", err)
			}
			lines := strings.Count(string(data), "\n") + 1
			for _, e := range errs {
				if e.File != "cfg/vsagent.toml" || e.Msg == "" || e.Line < 0 || e.Line > lines || strings.Contains(e.Error(), "\n") {
					t.Fatalf("malformed error %#v", e)
				}
			}
			return
		}
		appliances := make(map[string]bool)
		for _, a := range cfg.Appliances {
			if appliances[a.Name] || a.TemplateXML == "" || a.MaxVCPUs < a.VCPUs || a.MaxMemoryKiB < a.MemoryKiB {
				t.Fatalf("invalid appliance accepted: %+v", a)
			}
			appliances[a.Name] = true
		}
		for _, p := range cfg.Policies {
			chains := [][]string{p.Chain}
			for _, c := range p.Classifiers {
				chains = append(chains, c.Chain)
				if len(c.PortRanges) != len(c.Ports) || len(c.Prefixes) != len(c.CIDRs) {
					t.Fatalf("classifier with unparsed fields accepted: %+v", c)
				}
			}
			for _, chain := range chains {
				for _, name := range chain {
					if !appliances[name] {
						t.Fatalf("chain names unknown appliance %q", name)
					}
				}
			}
		}
	})
}
