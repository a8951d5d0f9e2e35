package main

import (
	"bytes"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vsagent/vsagent/sourceroute"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// TestBadConfigs checks every file of testdata/bad against the exact
// error it must produce (testdata/bad/NAME.err): each problem named with
// file:line and key.
func TestBadConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad configs: %v", err)
	}
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(strings.TrimSuffix(name, ".toml"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			_, err = parseConfig(name, data)
			if err == nil {
				t.Fatal("accepted")
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.File != name {
				t.Errorf("error %v is not a *ConfigError naming %s", err, name)
			}
			golden := strings.TrimSuffix(file, ".toml") + ".err"
			got := err.Error() + "\n"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
		})
	}
}

// ruleView is a rule's configuration, without its counters.
type ruleView struct {
	Name             string
	Action           string
	EtherType        uint16
	Proto            int
	Src, Dst         []string
	Sports, Dports   []portRange
	ICMPType, ICMPCd int
	Log, Notify      bool
}

func viewRules(rs []*rule) []ruleView {
	var out []ruleView
	strs := func(cs []cidr) []string {
		var s []string
		for _, c := range cs {
			s = append(s, c.prefix.String())
		}
		return s
	}
	for _, r := range rs {
		out = append(out, ruleView{r.name, r.action.String(), r.etherType, r.proto, strs(r.src), strs(r.dst),
			r.sports, r.dports, r.icmpType, r.icmpCode, r.log, r.notify})
	}
	return out
}

func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile("testdata/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig("example.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.iface != "eth0" || cfg.etherType != 0x88B5 || cfg.maxHops != 16 || cfg.statsInterval != 10*time.Second ||
		cfg.logLevel != slog.LevelInfo || cfg.logEvery != 100*time.Millisecond || cfg.logBurst != 20 ||
		cfg.defaultAction != actionAllow || !cfg.notify || cfg.malformed != actionDeny || !cfg.mac.IsZero() {
		t.Errorf("settings: %+v", cfg)
	}
	wantRules := []ruleView{
		{"no-telnet", "deny", 0, protoTCP, nil, nil, nil, []portRange{{23, 23}}, anyICMP, anyICMP, true, true},
		{"dns-to-resolvers", "allow", 0, protoUDP, nil, []string{"10.0.0.2/32", "fd00::53/128"}, nil, []portRange{{53, 53}, {5353, 5353}}, anyICMP, anyICMP, false, true},
		{"no-other-dns", "deny", 0, protoUDP, nil, nil, nil, []portRange{{53, 53}}, anyICMP, anyICMP, false, true},
		{"block-ping-from-guests", "deny", 0, protoICMP, []string{"10.0.0.0/8"}, nil, nil, nil, 8, anyICMP, false, false},
		{"high-ports-out", "allow", 0, protoTCP, nil, []string{"0.0.0.0/0", "::/0"}, []portRange{{1024, 65535}}, nil, anyICMP, anyICMP, false, true},
	}
	if diff := cmp.Diff(wantRules, viewRules(cfg.rules), cmp.AllowUnexported(portRange{})); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
	type sigView struct {
		Name, Pattern string
		Alert         bool
		Proto         int
		Dports        []portRange
		Log, Notify   bool
	}
	var gotSigs []sigView
	for _, s := range cfg.signatures {
		gotSigs = append(gotSigs, sigView{s.name, string(s.pattern), s.alert, s.proto, s.dports, s.log, s.notify})
	}
	wantSigs := []sigView{
		{"eicar", `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR`, false, anyProto, nil, false, true},
		{"shellcode-nop-sled", strings.Repeat("\x90", 8), false, anyProto, nil, false, true},
		{"http-admin-probe", "GET /admin", true, protoTCP, []portRange{{80, 80}, {8080, 8080}}, true, true},
	}
	if diff := cmp.Diff(wantSigs, gotSigs, cmp.AllowUnexported(portRange{})); diff != "" {
		t.Errorf("signatures (-want +got):\n%s", diff)
	}
}

func TestConfigDefaultsAndValues(t *testing.T) {
	tests := []struct {
		name string
		toml string
		want func(c *config) bool
	}{
		{"empty file is the defaults", "", func(c *config) bool {
			return c.defaultAction == actionAllow && c.etherType == sourceroute.DefaultEtherType && c.statsInterval == 10*time.Second && len(c.rules) == 0
		}},
		{"mac and text logs", "[interface]\nmac = \"02:00:00:00:10:01\"\n[output]\nlog_format = \"text\"\nlog_level = \"debug\"\nstats_interval = \"0s\"", func(c *config) bool {
			return c.mac.String() == "02:00:00:00:10:01" && c.logFormat == "text" && c.logLevel == slog.LevelDebug && c.statsInterval == 0
		}},
		{"protocol by number and case", "[[rule]]\naction = \"deny\"\nproto = 47\n[[rule]]\naction = \"deny\"\nproto = \"UDP\"", func(c *config) bool {
			return c.rules[0].proto == protoGRE && c.rules[1].proto == protoUDP
		}},
		{"unnamed rules are numbered", "[[rule]]\naction = \"deny\"\n[[signature]]\nhex = \"00ff\"", func(c *config) bool {
			return c.rules[0].name == "rule-1" && c.signatures[0].name == "signature-1" && string(c.signatures[0].pattern) == "\x00\xff"
		}},
		{"inline array of tables", `rule = [{action = "deny", proto = "tcp"}]`, func(c *config) bool {
			return len(c.rules) == 1 && c.rules[0].proto == protoTCP
		}},
		{"ethertype rule for ARP", "[filter]\ndefault = \"deny\"\n[[rule]]\naction = \"allow\"\nethertype = 0x0806", func(c *config) bool {
			return c.defaultAction == actionDeny && c.rules[0].etherType == 0x0806
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfig("t.toml", []byte(tt.toml))
			if err != nil {
				t.Fatal(err)
			}
			if !tt.want(c) {
				t.Errorf("unexpected config %+v", c)
			}
		})
	}
}

// FuzzParseConfig: any input is either a configuration or a list of
// located errors; never a panic, never an error without its file.
func FuzzParseConfig(f *testing.F) {
	if data, err := os.ReadFile("testdata/example.toml"); err == nil {
		f.Add(data)
	}
	files, _ := filepath.Glob("testdata/bad/*.toml")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parseConfig("f.toml", data)
		if err == nil {
			if cfg == nil {
				t.Fatal("no config and no error")
			}
			for _, r := range cfg.rules {
				if r.name == "" {
					t.Fatal("unnamed rule accepted")
				}
			}
			return
		}
		var errs ConfigErrors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error %v is not ConfigErrors", err)
		}
		nlines := bytes.Count(data, []byte("\n")) + 1
		for _, e := range errs {
			if e.File != "f.toml" || e.Line < 0 || e.Line > nlines {
				t.Fatalf("badly located error %+v in a %d-line input", e, nlines)
			}
		}
	})
}
