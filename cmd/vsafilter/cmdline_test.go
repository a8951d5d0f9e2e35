package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		line    string
		want    map[string]string
		wantErr string
	}{
		{"console=ttyS0 root=/dev/vda quiet\n", map[string]string{}, ""},
		{"console=ttyS0 vsafilter.iface=eth0 vsafilter.mac=02:00:00:00:10:01 vsafilter.stats=5s\n",
			map[string]string{"iface": "eth0", "mac": "02:00:00:00:10:01", "stats": "5s"}, ""},
		{`vsafilter.config="/mnt/my config.toml" vsafilter.up=0`, map[string]string{"config": "/mnt/my config.toml", "up": "0"}, ""},
		{"vsafilter.rules=W1tydWxlXV0K== -- init args", map[string]string{"rules": "W1tydWxlXV0K=="}, ""},
		{"vsafilter.ifcae=eth0", nil, "unknown parameter vsafilter.ifcae"},
		{"vsafilter.iface=eth0 vsafilter.iface=eth1", nil, "vsafilter.iface given twice"},
	}
	for _, tt := range tests {
		got, err := parseCmdline(tt.line)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseCmdline(%q) error %v, want %q", tt.line, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseCmdline(%q): %v", tt.line, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("parseCmdline(%q) (-want +got):\n%s", tt.line, diff)
		}
	}
}

func FuzzParseCmdline(f *testing.F) {
	f.Add(`console=ttyS0 vsafilter.iface=eth0 vsafilter.config="/a b" vsafilter.rules=eA==`)
	f.Add(`"vsafilter.stats=1s`)
	f.Add("vsafilter.=x vsafilter.up")
	f.Fuzz(func(t *testing.T, line string) {
		params, err := parseCmdline(line)
		if err != nil {
			return
		}
		for k := range params {
			if _, ok := cmdlineKeys[k]; !ok {
				t.Fatalf("unknown key %q accepted", k)
			}
		}
		// Whatever was accepted must either configure or fail cleanly.
		if params["config"] == "" {
			_, _, _ = configFromCmdline(params)
		}
	})
}

func TestConfigFromCmdline(t *testing.T) {
	dir := t.TempDir()
	rules := "[[rule]]\naction = \"deny\"\nproto = \"tcp\"\ndport = 23\n[output]\nstats_interval = \"1s\"\n"
	// A disk image: the file, then zero padding to a sector multiple.
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, append([]byte(rules), make([]byte, 4096-len(rules))...), 0o644); err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString([]byte(rules))

	for _, tt := range []struct {
		name   string
		line   string
		source string
	}{
		{"inline rules", "vsafilter.iface=eth0 vsafilter.rules=" + b64, "vsafilter.rules"},
		{"inline rules, url alphabet without padding", "vsafilter.iface=eth0 vsafilter.rules=" + base64.RawURLEncoding.EncodeToString([]byte(rules)), "vsafilter.rules"},
		{"config on a disk", "vsafilter.iface=eth0 vsafilter.config=" + disk, disk},
	} {
		t.Run(tt.name, func(t *testing.T) {
			params, err := parseCmdline(tt.line)
			if err != nil {
				t.Fatal(err)
			}
			cfg, source, err := configFromCmdline(params)
			if err != nil {
				t.Fatal(err)
			}
			if source != tt.source || cfg.iface != "eth0" || len(cfg.rules) != 1 || cfg.rules[0].dports[0] != (portRange{23, 23}) ||
				cfg.statsInterval != time.Second || !cfg.bringUp || cfg.wait != 30*time.Second {
				t.Errorf("source %q config %+v", source, cfg)
			}
		})
	}

	t.Run("parameters override the file", func(t *testing.T) {
		params, _ := parseCmdline("vsafilter.config=" + disk + " vsafilter.stats=0s vsafilter.up=0 vsafilter.wait=2s vsafilter.ethertype=0x9000 vsafilter.mac=02:00:00:00:10:07 vsafilter.log=debug")
		cfg, _, err := configFromCmdline(params)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.statsInterval != 0 || cfg.bringUp || cfg.wait != 2*time.Second || cfg.etherType != 0x9000 || cfg.mac.String() != "02:00:00:00:10:07" || cfg.logLevel.String() != "DEBUG" {
			t.Errorf("config %+v", cfg)
		}
	})

	for _, tt := range []struct{ name, line, want string }{
		{"both sources", "vsafilter.config=/x vsafilter.rules=" + b64, "not both"},
		{"not base64", "vsafilter.rules=!!!", "vsafilter.rules: not base64"},
		{"bad rules", "vsafilter.rules=" + base64.StdEncoding.EncodeToString([]byte("[[rule]]\naction = \"maybe\"\n")), `vsafilter.rules:2: rule[0].action: "maybe" is not allow or deny`},
		{"missing disk", "vsafilter.config=" + filepath.Join(dir, "none"), "no such file"},
		{"bad mac", "vsafilter.mac=ff:ff:ff:ff:ff:ff", "vsafilter.mac: ff:ff:ff:ff:ff:ff is not a unicast MAC address"},
		{"bad ethertype", "vsafilter.ethertype=0x88b6", "vsafilter.ethertype: sourceroute: invalid codec configuration"},
		{"bad duration", "vsafilter.stats=soon", `vsafilter.stats: "soon" is not a duration`},
		{"bad bool", "vsafilter.up=maybe", `vsafilter.up: "maybe" is not 1 or 0`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			params, err := parseCmdline(tt.line)
			if err == nil {
				_, _, err = configFromCmdline(params)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}
