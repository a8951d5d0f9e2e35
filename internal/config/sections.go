package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"libvirt.org/go/libvirtxml"
)

// sun_path holds 108 bytes including the terminating NUL.
const maxSocketPath = 107

func (l *loader) agent(t *table) {
	if t == nil {
		return
	}
	a := &l.cfg.Agent
	if t.str("libvirt_uri", &a.LibvirtURI) {
		if u, err := url.Parse(a.LibvirtURI); err != nil || u.Scheme == "" {
			t.errorf("libvirt_uri", "%q is not a libvirt URI such as \"qemu:///system\"", a.LibvirtURI)
		}
	}
	t.duration("gate_timeout", &a.GateTimeout, time.Second)
	t.duration("resync_interval", &a.ResyncInterval, time.Second)
	if t.str("state_dir", &a.StateDir) && !filepath.IsAbs(a.StateDir) {
		t.errorf("state_dir", "%q is not an absolute path", a.StateDir)
	}
	if t.str("socket", &a.Socket) {
		switch {
		case !filepath.IsAbs(a.Socket):
			t.errorf("socket", "%q is not an absolute path", a.Socket)
		case len(a.Socket) > maxSocketPath-len(hookSocketSuffix):
			t.errorf("socket", "path is %d bytes long; a unix socket path may have at most %d, and the hook socket adds %q",
				len(a.Socket), maxSocketPath, hookSocketSuffix)
		}
	}
	t.oneOf("log_level", &a.LogLevel, "debug", "info", "warn", "error")
	t.oneOf("hook_failure", &a.HookFailure, "closed", "open")
	t.finish()
}

func (l *loader) dataplane(t *table) {
	if t == nil {
		return
	}
	dp := &l.cfg.Dataplane
	var ethertype int64
	if t.integer("ethertype", &ethertype, -1<<63, 1<<63-1) {
		if err := checkEtherType(ethertype); err != nil {
			t.errorf("ethertype", "%v", err)
		} else {
			dp.EtherType = uint16(ethertype)
		}
	}
	t.intField("max_hops", &dp.MaxHops, 2, 64)
	t.duration("return_timeout", &dp.ReturnTimeout, time.Millisecond)
	t.duration("flow_idle_timeout", &dp.FlowIdleTimeout, time.Second)
	t.intField("max_flows", &dp.MaxFlows, 1, 100_000_000)
	t.intField("workers", &dp.Workers, 0, 1024)
	t.boolean("fast_path", &dp.FastPath)
	t.intField("fast_path_after", &dp.FastPathAfter, 1, 1_000_000)
	if t.str("port", &dp.Port) {
		if err := checkIfName(dp.Port); err != nil {
			t.errorf("port", "%v", err)
		}
	}
	intervalOK := t.duration("probe_interval", &dp.ProbeInterval, 10*time.Millisecond)
	timeoutOK := t.duration("probe_timeout", &dp.ProbeTimeout, time.Millisecond)
	// As with lower_cpu: compare only values the file set and that stood.
	if (intervalOK || timeoutOK) && intervalOK == t.has("probe_interval") && timeoutOK == t.has("probe_timeout") &&
		dp.ProbeTimeout > dp.ProbeInterval {
		key := "probe_timeout"
		if !t.has(key) {
			key = "probe_interval"
		}
		t.errorf(key, "probe_timeout (%s) must not exceed probe_interval (%s): one probe is outstanding at a time", dp.ProbeTimeout, dp.ProbeInterval)
	}
	t.intField("probe_misses", &dp.ProbeMisses, 1, 100)
	t.finish()
}

var backends = []string{"tc-redirect", "macvtap", "switchdev", "sriov-vlan"}

func (l *loader) intercept(t *table) {
	if t == nil {
		return
	}
	ic := &l.cfg.Intercept
	t.oneOf("backend", &ic.Backend, backends...)
	if t.str("uplink", &ic.Uplink) && ic.Uplink != "" {
		if err := checkIfName(ic.Uplink); err != nil {
			t.errorf("uplink", "%v", err)
		}
	}
	t.finish()
}

func (l *loader) metrics(t *table) {
	if t == nil {
		return
	}
	m := &l.cfg.Metrics
	if t.str("listen", &m.Listen) && m.Listen != "" {
		host, port, err := net.SplitHostPort(m.Listen)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 || containsSpace(host) {
			t.errorf("listen", "%q is not host:port with a port 1..65535, such as \"127.0.0.1:9464\" or \":9464\"", m.Listen)
		}
	}
	t.finish()
}

func containsSpace(s string) bool {
	return slices.ContainsFunc([]byte(s), func(c byte) bool { return c <= ' ' })
}

func (l *loader) scaling(t *table) {
	if t == nil {
		return
	}
	s := &l.cfg.Scaling
	t.duration("poll_interval", &s.PollInterval, time.Second)
	upperOK := t.percent("upper_cpu", &s.UpperCPU, 1, 100)
	lowerOK := t.percent("lower_cpu", &s.LowerCPU, 0, 100)
	// Compare only values that are what the file says: a rejected value
	// has left the default in place, and comparing with it would mislead.
	if (upperOK || lowerOK) && upperOK == t.has("upper_cpu") && lowerOK == t.has("lower_cpu") {
		if s.LowerCPU >= s.UpperCPU {
			key := "lower_cpu"
			if !t.has(key) {
				key = "upper_cpu"
			}
			t.errorf(key, "lower_cpu (%v) must be less than upper_cpu (%v)", s.LowerCPU, s.UpperCPU)
		}
	}
	t.duration("hold", &s.Hold, 0)
	t.duration("cooldown", &s.Cooldown, 0)
	t.percent("host_cpu_percent", &s.HostCPUPercent, 1, 100)
	t.percent("host_memory_percent", &s.HostMemoryPercent, 1, 100)
	t.finish()
}

var (
	applianceName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,30}$`)
	policyName    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
)

func (l *loader) appliance(t *table, dir string) {
	a := Appliance{
		Kind:         KindHeader,
		VCPUs:        1,
		MemoryKiB:    256 << 10,
		MaxInstances: 1,
		OnFailure:    FailureBlock,
		Position:     Position{File: t.d.file, Line: t.line},
	}
	if t.require("name") && t.str("name", &a.Name) && !applianceName.MatchString(a.Name) {
		t.errorf("name", "%q is not a valid appliance name: use 1 to 31 lowercase letters, digits and '-', starting with a letter or digit", a.Name)
	}
	haveTemplate := t.require("template") && t.str("template", &a.Template)
	t.oneOf("kind", &a.Kind, KindHeader, KindWire)
	// As for the CPU thresholds, a maximum is compared with its base only
	// when the base is what the file says.
	vcpusOK := t.intField("vcpus", &a.VCPUs, 1, 512) == t.has("vcpus")
	if t.intField("max_vcpus", &a.MaxVCPUs, 1, 512) {
		if vcpusOK && a.MaxVCPUs < a.VCPUs {
			t.errorf("max_vcpus", "%d is less than vcpus (%d)", a.MaxVCPUs, a.VCPUs)
		}
	} else {
		a.MaxVCPUs = a.VCPUs
	}
	memoryOK := t.size("memory", &a.MemoryKiB) == t.has("memory")
	if t.size("max_memory", &a.MaxMemoryKiB) {
		if memoryOK && a.MaxMemoryKiB < a.MemoryKiB {
			t.errorf("max_memory", "%s is less than memory (%s)", FormatSize(a.MaxMemoryKiB), FormatSize(a.MemoryKiB))
		}
	} else {
		a.MaxMemoryKiB = a.MemoryKiB
	}
	t.intField("max_instances", &a.MaxInstances, 1, 256)
	t.oneOf("on_failure", &a.OnFailure, FailureBlock, FailureBypass)
	if haveTemplate {
		l.template(t, dir, &a)
	}
	t.finish()
	l.appliances = append(l.appliances, applianceDecl{a: a, t: t})
}

// template reads and checks an appliance's domain template: it must be
// domain XML libvirt can define, with the interfaces the appliance kind
// needs (a wire appliance has an in-port and an out-port).
func (l *loader) template(t *table, dir string, a *Appliance) {
	if a.Template == "" {
		t.errorf("template", "must not be empty")
		return
	}
	name, err := l.src.resolve(dir, a.Template)
	if err != nil {
		t.d.addError(t.lineOf("template"), t.keyPath("template"), err, "%v", err)
		return
	}
	data, err := l.src.readFile(name)
	if err != nil {
		msg := fmt.Sprintf("cannot read template %s: %v", name, unwrapPath(err))
		if errors.Is(err, fs.ErrNotExist) {
			msg = fmt.Sprintf("template file %s does not exist", name)
		}
		t.d.addError(t.lineOf("template"), t.keyPath("template"), err, "%s", msg)
		return
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(string(data)); err != nil {
		t.d.addError(t.lineOf("template"), t.keyPath("template"), err, "template %s is not valid domain XML: %s", name, oneLine(err.Error()))
		return
	}
	if dom.Type == "" {
		t.errorf("template", "template %s: <domain> has no type attribute", name)
	}
	interfaces := 0
	if dom.Devices != nil {
		interfaces = len(dom.Devices.Interfaces)
	}
	need := 1
	if a.Kind == KindWire {
		need = 2
	}
	if interfaces < need {
		t.errorf("template", "template %s has %d <interface> element(s); a %s appliance needs at least %d", name, interfaces, a.Kind, need)
	}
	a.TemplatePath = l.src.location(name)
	a.TemplateXML = string(data)
}

func (l *loader) policy(t *table) {
	p := Policy{
		Symmetric: true,
		OnTimeout: OnTimeoutAlert,
		BlockFor:  30 * time.Second,
		Position:  Position{File: t.d.file, Line: t.line},
	}
	if t.require("name") && t.str("name", &p.Name) && !policyName.MatchString(p.Name) {
		t.errorf("name", "%q is not a valid policy name: use 1 to 63 letters, digits, '_', '.' and '-', starting with a letter or digit", p.Name)
	}
	if t.require("chain") {
		t.strs("chain", &p.Chain)
	}
	if m := t.sub("match"); m != nil {
		if m.strs("domains", &p.Match.Domains) {
			for i, g := range p.Match.Domains {
				if err := checkGlob(g); err != nil {
					m.elemErrorf("domains", i, "%v", err)
				}
			}
		}
		m.finish()
	}
	var classifiers []*table
	for _, ct := range t.tables("classifier") {
		p.Classifiers = append(p.Classifiers, classifier(ct))
		classifiers = append(classifiers, ct)
	}
	t.boolean("symmetric", &p.Symmetric)
	t.oneOf("on_timeout", &p.OnTimeout, OnTimeoutAlert, OnTimeoutBlock)
	if t.duration("block_for", &p.BlockFor, time.Second) && p.OnTimeout != OnTimeoutBlock {
		t.errorf("block_for", "only applies with on_timeout = %q", OnTimeoutBlock)
	}
	t.finish()
	l.policies = append(l.policies, policyDecl{p: p, t: t, classifiers: classifiers})
}

func classifier(t *table) Classifier {
	c := Classifier{Direction: DirectionBoth, Protocol: "any", ProtocolNumber: AnyProtocol}
	t.oneOf("direction", &c.Direction, DirectionEgress, DirectionIngress, DirectionBoth)

	protocolOK := true
	if v, ok := t.get("protocol"); ok {
		switch p := v.(type) {
		case string:
			c.Protocol = p
		case int64:
			c.Protocol = strconv.FormatInt(p, 10)
		default:
			t.typeError("protocol", "a string or an integer", v)
			protocolOK = false
		}
		if protocolOK {
			n, err := ParseProtocol(c.Protocol)
			if err != nil {
				t.errorf("protocol", "%v", err)
				protocolOK = false
			}
			c.ProtocolNumber = n
		}
	}

	if v, ok := t.get("ports"); ok {
		c.Ports, c.PortRanges = ports(t, v)
		if len(c.Ports) > 0 && protocolOK && !hasPorts(c.ProtocolNumber) {
			t.errorf("ports", "ports need protocol \"tcp\", \"udp\" or \"sctp\", not %q", c.Protocol)
		}
	}

	if t.strs("cidrs", &c.CIDRs) {
		for i, s := range c.CIDRs {
			p, err := ParsePrefix(s)
			if err != nil {
				t.elemErrorf("cidrs", i, "%v", err)
				continue
			}
			c.Prefixes = append(c.Prefixes, p)
			if protocolOK && c.ProtocolNumber == protocolNumbers["icmp"] && p.Addr().Is6() ||
				protocolOK && c.ProtocolNumber == protocolNumbers["icmpv6"] && p.Addr().Is4() {
				t.elemErrorf("cidrs", i, "%s can never match protocol %q", s, c.Protocol)
			}
		}
	}

	if t.require("chain") {
		t.strs("chain", &c.Chain)
	}
	t.finish()
	return c
}

// ports decodes a classifier's ports: strings ("443", "1000-2000") or
// integers.
func ports(t *table, v any) ([]string, []PortRange) {
	arr, ok := v.([]any)
	if !ok {
		t.typeError("ports", "an array of ports", v)
		return nil, nil
	}
	var written []string
	var ranges []PortRange
	for i, e := range arr {
		var s string
		switch p := e.(type) {
		case string:
			s = p
		case int64:
			s = strconv.FormatInt(p, 10)
		default:
			t.elemErrorf("ports", i, "must be a string or an integer, not %s", tomlTypeName(e))
			continue
		}
		r, err := ParsePortRange(s)
		if err != nil {
			t.elemErrorf("ports", i, "%v", err)
			continue
		}
		written = append(written, s)
		ranges = append(ranges, r)
	}
	return written, ranges
}

// crossCheck runs the checks that span entries and files: unique names and
// chains that name existing appliances and fit in a route.
func (l *loader) crossCheck() {
	appliances := make(map[string]Position)
	for _, d := range l.appliances {
		unique(d.t, "appliance", d.a.Name, d.a.Position, appliances)
	}
	policies := make(map[string]Position)
	for _, d := range l.policies {
		unique(d.t, "policy", d.p.Name, d.p.Position, policies)
	}
	for _, d := range l.policies {
		l.checkChain(d.t, d.p.Chain, appliances)
		for i, ct := range d.classifiers {
			l.checkChain(ct, d.p.Classifiers[i].Chain, appliances)
		}
	}
}

// unique records where name was declared, or reports it as a duplicate.
func unique(t *table, what, name string, pos Position, seen map[string]Position) {
	if name == "" {
		return
	}
	if first, dup := seen[name]; dup {
		t.errorf("name", "duplicate %s %q (first declared at %s)", what, name, first)
		return
	}
	seen[name] = pos
}

func (l *loader) checkChain(t *table, chain []string, appliances map[string]Position) {
	known := make([]string, 0, len(appliances))
	for name := range appliances {
		known = append(known, name)
	}
	for i, name := range chain {
		if slices.Index(chain, name) < i {
			t.elemErrorf("chain", i, "appliance %q appears twice in the chain", name)
			continue
		}
		if _, ok := appliances[name]; ok || l.unparsed {
			continue
		}
		if hint := closest(name, known); hint != "" {
			t.elemErrorf("chain", i, "unknown appliance %q (did you mean %q?)", name, hint)
		} else {
			t.elemErrorf("chain", i, "unknown appliance %q", name)
		}
	}
	// A route lists every appliance and then the DM itself.
	if maxHops := l.cfg.Dataplane.MaxHops; len(chain)+1 > maxHops {
		t.errorf("chain", "%d appliances do not fit in a route of max_hops = %d (the DM takes one hop)", len(chain), maxHops)
	}
}
