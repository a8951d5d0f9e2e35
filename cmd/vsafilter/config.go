package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/vsagent/vsagent/sourceroute"
)

// config is a validated vsafilter configuration.
type config struct {
	iface       string
	mac         sourceroute.MAC // zero: the interface's own address
	etherType   uint16
	maxHops     int
	promiscuous bool
	wait        time.Duration
	bringUp     bool

	statsInterval time.Duration
	logLevel      slog.Level
	logFormat     string
	logEvery      time.Duration
	logBurst      int

	defaultAction action
	notify        bool
	malformed     action
	rules         []*rule
	signatures    []*signature
	matcher       *matcher // the signatures compiled; nil without signatures
}

func defaultConfig() *config {
	return &config{
		etherType:     sourceroute.DefaultEtherType,
		maxHops:       sourceroute.DefaultMaxHops,
		statsInterval: 10 * time.Second,
		logLevel:      slog.LevelInfo,
		logFormat:     "json",
		logEvery:      100 * time.Millisecond,
		logBurst:      20,
		defaultAction: actionAllow,
		notify:        true,
		malformed:     actionDeny,
	}
}

// ConfigError is one problem in a configuration file, located by line.
type ConfigError struct {
	File string
	Line int    // 0 when unknown
	Key  string // path of the offending key ("rule[1].src"), or ""
	Msg  string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ConfigErrors lists every problem found in one file, in line order.
type ConfigErrors []*ConfigError

func (es ConfigErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap lets errors.As find each ConfigError.
func (es ConfigErrors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// parseConfig decodes and validates a TOML configuration. name is used in
// error messages. Every problem is reported, each with its line; unknown
// keys are errors.
func parseConfig(name string, data []byte) (*config, error) {
	return parseConfigOver(defaultConfig(), name, data)
}

// parseConfigOver is parseConfig starting from base instead of the
// defaults; base is modified.
func parseConfigOver(base *config, name string, data []byte) (*config, error) {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, ConfigErrors{{File: name, Line: pe.Position.Line, Msg: pe.Message}}
		}
		return nil, ConfigErrors{{File: name, Msg: err.Error()}}
	}
	d := &doc{file: name, lines: keyLines(data)}
	cfg := base
	root := d.root(raw)
	if t := root.table("interface"); t != nil {
		cfg.decodeInterface(t)
		t.done()
	}
	if t := root.table("output"); t != nil {
		cfg.decodeOutput(t)
		t.done()
	}
	if t := root.table("filter"); t != nil {
		cfg.decodeFilter(t)
		t.done()
	}
	ruleNames := make(map[string]string)
	for i, t := range root.tables("rule") {
		r := decodeRule(t, i)
		uniqueName(t, "rule", r.name, ruleNames)
		cfg.rules = append(cfg.rules, r)
		t.done()
	}
	sigNames := make(map[string]string)
	for i, t := range root.tables("signature") {
		s := decodeSignature(t, i)
		uniqueName(t, "signature", s.name, sigNames)
		cfg.signatures = append(cfg.signatures, s)
		t.done()
	}
	root.done()
	if len(d.errs) == 0 && len(cfg.signatures) > 0 {
		m, err := newMatcher(signaturePatterns(cfg.signatures))
		if err != nil {
			d.errs = append(d.errs, &ConfigError{File: name, Line: lineOf(d.lines, "signature"), Key: "signature", Msg: err.Error()})
		}
		cfg.matcher = m
	}
	if len(d.errs) > 0 {
		sort.SliceStable(d.errs, func(i, j int) bool { return d.errs[i].Line < d.errs[j].Line })
		return nil, ConfigErrors(d.errs)
	}
	return cfg, nil
}

// uniqueName reports name if an earlier element of the same array of
// tables already uses it: counters and logs are keyed by name.
func uniqueName(t *table, kind, name string, seen map[string]string) {
	if prev, dup := seen[name]; dup {
		t.errorf("name", "%s name %q already used by %s", kind, name, prev)
		return
	}
	seen[name] = t.path
}

func (cfg *config) decodeInterface(t *table) {
	if s, ok := t.str("name"); ok {
		if s == "" || len(s) > 15 || strings.ContainsAny(s, "/ \t\n") {
			t.errorf("name", "%q is not a valid interface name", s)
		}
		cfg.iface = s
	}
	if s, ok := t.str("mac"); ok {
		mac, err := parseHopMAC(s)
		if err != nil {
			t.errorf("mac", "%v", err)
		}
		cfg.mac = mac
	}
	if v, ok := t.integer("ethertype"); ok {
		et, err := checkEtherType(v)
		if err != nil {
			t.errorf("ethertype", "%v", err)
		}
		cfg.etherType = et
	}
	if v, ok := t.integer("max_hops"); ok {
		if v < 1 || v > 255 {
			t.errorf("max_hops", "%d is outside 1..255", v)
		}
		cfg.maxHops = int(v)
	}
	if v, ok := t.boolean("promiscuous"); ok {
		cfg.promiscuous = v
	}
	if v, ok := t.duration("wait"); ok {
		cfg.wait = v
	}
	if v, ok := t.boolean("bring_up"); ok {
		cfg.bringUp = v
	}
}

func (cfg *config) decodeOutput(t *table) {
	if v, ok := t.duration("stats_interval"); ok {
		cfg.statsInterval = v
	}
	if s, ok := t.str("log_level"); ok {
		if err := cfg.logLevel.UnmarshalText([]byte(s)); err != nil {
			t.errorf("log_level", "%q is not one of debug, info, warn, error", s)
		}
	}
	if s, ok := t.str("log_format"); ok {
		if s != "json" && s != "text" {
			t.errorf("log_format", "%q is not json or text", s)
		}
		cfg.logFormat = s
	}
	if v, ok := t.duration("log_every"); ok {
		cfg.logEvery = v
	}
	if v, ok := t.integer("log_burst"); ok {
		if v < 1 || v > 1e6 {
			t.errorf("log_burst", "%d is outside 1..1000000", v)
		}
		cfg.logBurst = int(v)
	}
}

func (cfg *config) decodeFilter(t *table) {
	if a, ok := t.action("default", "allow", "deny"); ok {
		cfg.defaultAction = a
	}
	if v, ok := t.boolean("notify"); ok {
		cfg.notify = v
	}
	if a, ok := t.action("malformed", "allow", "deny"); ok {
		cfg.malformed = a
	}
}

func decodeRule(t *table, i int) *rule {
	r := &rule{name: fmt.Sprintf("rule-%d", i+1), proto: anyProto, icmpType: anyICMP, icmpCode: anyICMP, notify: true}
	if s, ok := t.str("name"); ok {
		r.name = s
		if s == "" {
			t.errorf("name", "empty name")
		}
	}
	a, ok := t.action("action", "allow", "deny")
	if !ok && !t.has("action") {
		t.errorf("", `missing "action" (allow or deny)`)
	}
	r.action = a
	if v, ok := t.integer("ethertype"); ok {
		if v < 0x0600 || v > math.MaxUint16 {
			t.errorf("ethertype", "%#x is not an EtherType (0x0600..0xffff)", v)
		}
		r.etherType = uint16(v)
	}
	r.proto = t.proto("proto")
	r.src = t.prefixes("src")
	r.dst = t.prefixes("dst")
	r.sports = t.ports("sport", r.proto)
	r.dports = t.ports("dport", r.proto)
	r.icmpType = t.icmp("icmp_type", r.proto)
	r.icmpCode = t.icmp("icmp_code", r.proto)
	if r.etherType != 0 && r.needsIP() && r.etherType != etherTypeIPv4 && r.etherType != etherTypeIPv6 {
		t.errorf("ethertype", "%#04x frames carry no IP header, so the rule's IP criteria can never match", r.etherType)
	}
	if v, ok := t.boolean("log"); ok {
		r.log = v
	}
	if v, ok := t.boolean("notify"); ok {
		r.notify = v
	}
	return r
}

func decodeSignature(t *table, i int) *signature {
	s := &signature{name: fmt.Sprintf("signature-%d", i+1), proto: anyProto, notify: true}
	if v, ok := t.str("name"); ok {
		s.name = v
		if v == "" {
			t.errorf("name", "empty name")
		}
	}
	pat, hasPat := t.str("pattern")
	hx, hasHex := t.str("hex")
	switch {
	case hasPat && hasHex:
		t.errorf("hex", `give either "pattern" or "hex", not both`)
	case hasPat:
		s.pattern = []byte(pat)
	case hasHex:
		b, err := parseHexPattern(hx)
		if err != nil {
			t.errorf("hex", "%v", err)
		}
		s.pattern = b
	case !t.has("pattern") && !t.has("hex"):
		t.errorf("", `missing "pattern" or "hex"`)
	}
	if (hasPat || hasHex) && len(s.pattern) == 0 && !t.failed() {
		t.errorf("pattern", "empty pattern would match every payload")
	}
	if v, ok := t.str("action"); ok {
		switch v {
		case "drop":
		case "alert":
			s.alert = true
		default:
			t.errorf("action", "%q is not drop or alert", v)
		}
	}
	s.proto = t.proto("proto")
	s.dports = t.ports("dport", s.proto)
	if v, ok := t.boolean("log"); ok {
		s.log = v
	}
	if v, ok := t.boolean("notify"); ok {
		s.notify = v
	}
	return s
}

// parseHexPattern accepts hex digits, optionally separated by spaces,
// colons or line breaks between bytes ("deadbeef", "de ad be ef",
// "de:ad:be:ef").
func parseHexPattern(s string) ([]byte, error) {
	clean := strings.Map(func(r rune) rune {
		if r == ' ' || r == ':' || r == '\t' || r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, s)
	b, err := hex.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("%q is not hex bytes: %v", s, err)
	}
	return b, nil
}

// parseHopMAC parses a MAC that must be usable as a hop address.
func parseHopMAC(s string) (sourceroute.MAC, error) {
	mac, err := sourceroute.ParseMAC(s)
	if err != nil {
		return mac, fmt.Errorf("%q is not a MAC address", s)
	}
	if mac.IsZero() || mac.IsMulticast() {
		return mac, fmt.Errorf("%s is not a unicast MAC address", mac)
	}
	return mac, nil
}

func checkEtherType(v int64) (uint16, error) {
	if v < 0 || v > math.MaxUint16 {
		return 0, fmt.Errorf("%#x does not fit in 16 bits", v)
	}
	if _, err := sourceroute.NewCodec(uint16(v), sourceroute.DefaultMaxHops); err != nil {
		return 0, err
	}
	return uint16(v), nil
}

var protoNames = map[string]int{
	"any": anyProto, "icmp": protoICMP, "tcp": protoTCP, "udp": protoUDP, "gre": protoGRE,
	"esp": protoESP, "ah": protoAH, "icmpv6": protoICMPv6, "sctp": protoSCTP,
}

func protoName(p int) string {
	for name, n := range protoNames {
		if n == p {
			return name
		}
	}
	return strconv.Itoa(p)
}

// doc collects errors while a decoded TOML document is walked.
type doc struct {
	file  string
	lines map[string]int
	errs  []*ConfigError
}

// table is one TOML table being decoded. Every key read is marked, and
// done reports the rest as unknown.
type table struct {
	d     *doc
	path  string
	m     map[string]any
	seen  map[string]bool
	nerrs int
}

func (d *doc) root(m map[string]any) *table {
	return &table{d: d, m: m, seen: make(map[string]bool)}
}

func (t *table) keyPath(key string) string {
	if key == "" {
		return t.path
	}
	return join(t.path, key)
}

func (t *table) errorf(key, format string, args ...any) {
	p := t.keyPath(key)
	t.d.errs = append(t.d.errs, &ConfigError{File: t.d.file, Line: lineOf(t.d.lines, p), Key: p, Msg: fmt.Sprintf(format, args...)})
	t.nerrs++
}

func (t *table) failed() bool { return t.nerrs > 0 }

func (t *table) has(key string) bool {
	_, ok := t.m[key]
	return ok
}

// get marks key as known and returns its value.
func (t *table) get(key string) (any, bool) {
	t.seen[key] = true
	v, ok := t.m[key]
	return v, ok
}

// done reports every key of the table that no decoder asked for.
func (t *table) done() {
	var unknown []string
	for k := range t.m {
		if !t.seen[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Slice(unknown, func(i, j int) bool {
		return lineOf(t.d.lines, t.keyPath(unknown[i])) < lineOf(t.d.lines, t.keyPath(unknown[j]))
	})
	for _, k := range unknown {
		if _, isTable := t.m[k].(map[string]any); isTable {
			t.errorf(k, "unknown table")
		} else {
			t.errorf(k, "unknown key")
		}
	}
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return "a date or time"
}

func (t *table) wrongType(key, want string, v any) {
	t.errorf(key, "want %s, got %s", want, tomlType(v))
}

// scalar reads key as a T; a value of another type is reported as not
// being want. ok is false when the key is absent or of the wrong type.
func scalar[T any](t *table, key, want string) (val T, ok bool) {
	v, present := t.get(key)
	if !present {
		return val, false
	}
	if val, ok = v.(T); !ok {
		t.wrongType(key, want, v)
	}
	return val, ok
}

func (t *table) str(key string) (string, bool)    { return scalar[string](t, key, "a string") }
func (t *table) integer(key string) (int64, bool) { return scalar[int64](t, key, "an integer") }
func (t *table) boolean(key string) (bool, bool)  { return scalar[bool](t, key, "true or false") }

func (t *table) duration(key string) (time.Duration, bool) {
	s, ok := t.str(key)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		t.errorf(key, "%q is not a duration like \"10s\" or \"500ms\"", s)
		return 0, false
	}
	return d, true
}

// action reads a string that must be one of two words, the first meaning
// actionAllow.
func (t *table) action(key, allow, deny string) (action, bool) {
	s, ok := t.str(key)
	if !ok {
		return actionAllow, false
	}
	switch s {
	case allow:
		return actionAllow, true
	case deny:
		return actionDeny, true
	}
	t.errorf(key, "%q is not %s or %s", s, allow, deny)
	return actionAllow, false
}

// list reads a value that may be a single item or an array of items.
func (t *table) list(key string) ([]any, bool) {
	v, ok := t.get(key)
	if !ok {
		return nil, false
	}
	if a, ok := v.([]any); ok {
		if len(a) == 0 {
			t.errorf(key, "empty list matches nothing; leave the key out to match anything")
			return nil, false
		}
		return a, true
	}
	return []any{v}, true
}

func (t *table) proto(key string) int {
	v, ok := t.get(key)
	if !ok {
		return anyProto
	}
	switch v := v.(type) {
	case string:
		if p, ok := protoNames[strings.ToLower(v)]; ok {
			return p
		}
		t.errorf(key, "unknown protocol %q (any, tcp, udp, icmp, icmpv6, sctp, gre, esp, ah or a number)", v)
	case int64:
		if v >= 0 && v <= 255 {
			return int(v)
		}
		t.errorf(key, "protocol number %d is outside 0..255", v)
	default:
		t.wrongType(key, "a protocol name or number", v)
	}
	return anyProto
}

func (t *table) prefixes(key string) []cidr {
	items, ok := t.list(key)
	if !ok {
		return nil
	}
	var out []cidr
	for _, it := range items {
		s, ok := it.(string)
		if !ok {
			t.wrongType(key, "CIDR strings", it)
			continue
		}
		p, err := parsePrefix(s)
		if err != nil {
			t.errorf(key, "%v", err)
			continue
		}
		out = append(out, newCIDR(p))
	}
	return out
}

// parsePrefix accepts a CIDR or a bare address (a host prefix). Host bits
// set in a CIDR are refused: "10.0.0.1/8" is more likely a typo than intent.
func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

func (t *table) ports(key string, proto int) []portRange {
	items, ok := t.list(key)
	if !ok {
		return nil
	}
	if proto != protoTCP && proto != protoUDP && proto != protoSCTP {
		t.errorf(key, "ports need proto tcp, udp or sctp")
		return nil
	}
	var out []portRange
	for _, it := range items {
		r, err := parsePortRange(it)
		if err != nil {
			t.errorf(key, "%v", err)
			continue
		}
		out = append(out, r)
	}
	return out
}

// parsePortRange accepts 80, "80" or "1024-65535".
func parsePortRange(v any) (portRange, error) {
	switch v := v.(type) {
	case int64:
		if v < 0 || v > math.MaxUint16 {
			return portRange{}, fmt.Errorf("port %d is outside 0..65535", v)
		}
		return portRange{uint16(v), uint16(v)}, nil
	case string:
		lo, hi, isRange := strings.Cut(v, "-")
		l, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
		h := l
		var err2 error
		if isRange {
			h, err2 = strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
		}
		if err1 != nil || err2 != nil {
			return portRange{}, fmt.Errorf("%q is not a port or a range like \"1024-65535\"", v)
		}
		if l > h {
			return portRange{}, fmt.Errorf("port range %q is empty (start above end)", v)
		}
		return portRange{uint16(l), uint16(h)}, nil
	}
	return portRange{}, fmt.Errorf("want a port number or range, got %s", tomlType(v))
}

func (t *table) icmp(key string, proto int) int {
	v, ok := t.integer(key)
	if !ok {
		return anyICMP
	}
	if proto != protoICMP && proto != protoICMPv6 {
		t.errorf(key, "ICMP criteria need proto icmp or icmpv6")
		return anyICMP
	}
	if v < 0 || v > 255 {
		t.errorf(key, "%d is outside 0..255", v)
		return anyICMP
	}
	return int(v)
}

func (t *table) child(m map[string]any, path string) *table {
	return &table{d: t.d, path: path, m: m, seen: make(map[string]bool)}
}

// table returns the sub-table key, or nil if it is absent or not a table.
func (t *table) table(key string) *table {
	v, ok := t.get(key)
	if !ok {
		return nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.wrongType(key, "a table", v)
		return nil
	}
	return t.child(m, t.keyPath(key))
}

// tables returns the elements of the array of tables key.
func (t *table) tables(key string) []*table {
	v, ok := t.get(key)
	if !ok {
		return nil
	}
	ms, ok := v.([]map[string]any)
	if !ok {
		// An inline array of tables ("rule = [{...}]") decodes as []any.
		if arr, isArr := v.([]any); isArr {
			ok = true
			for _, e := range arr {
				m, isMap := e.(map[string]any)
				ok = ok && isMap
				ms = append(ms, m)
			}
		}
	}
	if !ok {
		t.wrongType(key, "an array of tables ([["+key+"]])", v)
		return nil
	}
	out := make([]*table, len(ms))
	for i, m := range ms {
		out[i] = t.child(m, t.keyPath(key)+"["+strconv.Itoa(i)+"]")
	}
	return out
}

func signaturePatterns(sigs []*signature) [][]byte {
	pats := make([][]byte, len(sigs))
	for i, s := range sigs {
		pats[i] = s.pattern
	}
	return pats
}
