package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// cmdlinePrefix marks the kernel command line parameters meant for us.
const cmdlinePrefix = "vsafilter."

// maxConfigBytes bounds what is read from a configuration source; a disk
// holding the file may be much larger than the file.
const maxConfigBytes = 4 << 20

// cmdlineKeys are the parameters vsafilter understands on the kernel
// command line, each with what it sets.
var cmdlineKeys = map[string]string{
	"iface":     "interface to serve",
	"mac":       "hop address, if not the interface's",
	"ethertype": "MSR EtherType, e.g. 0x88b5",
	"config":    "path of a TOML configuration file or of a disk holding one",
	"rules":     "a whole TOML configuration, base64-encoded",
	"stats":     "counters interval, e.g. 5s (0 disables)",
	"wait":      "how long to wait for the interface to appear, e.g. 30s",
	"up":        "bring the interface up: 1 or 0",
	"log":       "log level: debug, info, warn, error",
}

// parseCmdline returns the vsafilter.* parameters of a kernel command line
// without their prefix. Values may be double-quoted, as the kernel allows.
// Unknown vsafilter.* keys are errors so that a typo does not silently
// leave an appliance with default settings.
func parseCmdline(line string) (map[string]string, error) {
	out := make(map[string]string)
	for _, tok := range splitCmdline(line) {
		key, val, _ := strings.Cut(tok, "=")
		name, ok := strings.CutPrefix(key, cmdlinePrefix)
		if !ok {
			continue
		}
		if _, known := cmdlineKeys[name]; !known {
			return nil, fmt.Errorf("kernel command line: unknown parameter %s (known: %s)", key, knownCmdlineKeys())
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("kernel command line: %s given twice", key)
		}
		out[name] = val
	}
	return out, nil
}

func knownCmdlineKeys() string {
	keys := make([]string, 0, len(cmdlineKeys))
	for k := range cmdlineKeys {
		keys = append(keys, cmdlinePrefix+k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

// splitCmdline splits at spaces outside double quotes and removes the
// quotes, like the kernel's own parameter parser.
func splitCmdline(line string) []string {
	var toks []string
	var cur strings.Builder
	inQuote, inTok := false, false
	for _, r := range line {
		switch {
		case r == '"':
			inQuote, inTok = !inQuote, true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if inTok {
				toks = append(toks, cur.String())
				cur.Reset()
				inTok = false
			}
		default:
			cur.WriteRune(r)
			inTok = true
		}
	}
	if inTok {
		toks = append(toks, cur.String())
	}
	return toks
}

// configFromCmdline builds the configuration from kernel command line
// parameters. An appliance VM has no one to bring its link up or wait for
// the driver, so in this mode the interface is brought up and waited for
// (30 s) unless the configuration says otherwise. Explicit parameters
// override the configuration.
func configFromCmdline(params map[string]string) (*config, string, error) {
	cfg := defaultConfig()
	cfg.bringUp, cfg.wait = true, 30*time.Second
	source := "kernel command line"
	if params["config"] != "" && params["rules"] != "" {
		return nil, "", errors.New("kernel command line: give vsafilter.config or vsafilter.rules, not both")
	}
	if path := params["config"]; path != "" {
		data, err := readConfigSource(path)
		if err != nil {
			return nil, "", err
		}
		if cfg, err = parseConfigOver(cfg, path, data); err != nil {
			return nil, "", err
		}
		source = path
	}
	if enc := params["rules"]; enc != "" {
		data, err := decodeBase64(enc)
		if err != nil {
			return nil, "", fmt.Errorf("kernel command line: vsafilter.rules: %w", err)
		}
		if cfg, err = parseConfigOver(cfg, "vsafilter.rules", data); err != nil {
			return nil, "", err
		}
		source = "vsafilter.rules"
	}
	if err := cfg.override(params, "kernel command line: vsafilter."); err != nil {
		return nil, "", err
	}
	return cfg, source, nil
}

// override applies settings given as text (command line parameters or
// flags) on top of the configuration; where names the source in errors.
func (cfg *config) override(params map[string]string, where string) error {
	for _, k := range []string{"iface", "mac", "ethertype", "stats", "wait", "up", "log"} {
		v, ok := params[k]
		if !ok {
			continue
		}
		var err error
		switch k {
		case "iface":
			if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ ") {
				err = fmt.Errorf("%q is not a valid interface name", v)
			}
			cfg.iface = v
		case "mac":
			cfg.mac, err = parseHopMAC(v)
		case "ethertype":
			var n uint64
			if n, err = strconv.ParseUint(v, 0, 16); err == nil {
				cfg.etherType, err = checkEtherType(int64(n))
			} else {
				err = fmt.Errorf("%q is not a 16-bit number", v)
			}
		case "stats", "wait":
			var d time.Duration
			if d, err = time.ParseDuration(v); err != nil || d < 0 {
				err = fmt.Errorf("%q is not a duration like 10s", v)
			} else if k == "stats" {
				cfg.statsInterval = d
			} else {
				cfg.wait = d
			}
		case "up":
			cfg.bringUp, err = strconv.ParseBool(v)
			if err != nil {
				err = fmt.Errorf("%q is not 1 or 0", v)
			}
		case "log":
			if cfg.logLevel.UnmarshalText([]byte(v)) != nil {
				err = fmt.Errorf("%q is not one of debug, info, warn, error", v)
			}
		}
		if err != nil {
			return fmt.Errorf("%s%s: %w", where, k, err)
		}
	}
	return nil
}

func decodeBase64(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// readConfigSource reads a configuration file, or a disk (block device or
// image) that holds one at its start followed by zero padding: TOML cannot
// contain a NUL byte, so the first one ends the text.
func readConfigSource(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	} else if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("%s: configuration larger than %d bytes", path, maxConfigBytes)
	}
	return data, nil
}
