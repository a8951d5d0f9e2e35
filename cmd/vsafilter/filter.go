package main

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/sourceroute"
)

// signature is one compiled payload signature.
type signature struct {
	name    string
	pattern []byte
	alert   bool // count and log, but let the frame pass
	proto   int  // only payloads of this IP protocol, or anyProto
	dports  []portRange
	log     bool
	notify  bool
	counter hitCounter
	seen    uint64 // filter generation of the last frame it was counted for
}

func (s *signature) applies(p *packet) bool {
	if s.proto != anyProto && (p.ipVersion == 0 || int(p.proto) != s.proto) {
		return false
	}
	return s.dports == nil || (p.hasPorts && portsContain(s.dports, p.dport))
}

// filter is vsafilter's inspector: ordered 5-tuple rules, first match
// wins, then the signatures over the payload of what the rules allowed.
// Inspect is called from one goroutine at a time (the appliance's Run);
// the counters may be read from any goroutine.
type filter struct {
	rules         []*rule
	signatures    []*signature
	matcher       *matcher // nil without signatures
	defaultAction action
	defaultHits   hitCounter
	malformed     action
	malformedBy   [numMalformedReasons]atomic.Uint64
	events        slog.Handler // rate-limited; see event
	generation    uint64
}

func newFilter(cfg *config, events slog.Handler) *filter {
	return &filter{
		rules:         cfg.rules,
		signatures:    cfg.signatures,
		matcher:       cfg.matcher,
		defaultAction: cfg.defaultAction,
		malformed:     cfg.malformed,
		events:        events,
	}
}

// automatonStates is the size of the signature automaton, for reports.
func (f *filter) automatonStates() int {
	if f.matcher == nil {
		return 0
	}
	return f.matcher.states()
}

// Inspect implements appliance.Inspector. It allocates nothing unless an
// event is logged.
func (f *filter) Inspect(inner []byte, meta appliance.FrameMeta) appliance.Verdict {
	var p packet
	if why := parsePacket(inner, &p); why != parsedOK {
		f.malformedBy[why].Add(1)
		if f.malformed == actionAllow {
			return appliance.Pass()
		}
		if f.eventEnabled() {
			f.event("dropped malformed inner frame", &meta, &p, slog.String("reason", why.String()))
		}
		return appliance.DropNotify(sourceroute.NoticeMalformed)
	}

	r := firstMatch(f.rules, &p)
	act, notify := f.defaultAction, true
	if r != nil {
		r.counter.add(len(inner))
		act, notify = r.action, r.notify
		if r.log && f.eventEnabled() {
			f.event("rule matched", &meta, &p, slog.String("rule", r.name), slog.String("action", r.action.String()))
		}
	} else {
		f.defaultHits.add(len(inner))
	}
	if act == actionDeny {
		return dropVerdict(notify, sourceroute.NoticePolicyDeny)
	}

	if f.matcher == nil || len(p.payload) == 0 {
		return appliance.Pass()
	}
	f.generation++
	var hit *signature
	f.matcher.scan(p.payload, func(i, start, _ int) bool {
		s := f.signatures[i]
		if s.seen == f.generation || !s.applies(&p) {
			return true
		}
		s.seen = f.generation
		s.counter.add(len(inner))
		if s.log && f.eventEnabled() {
			f.event("signature matched", &meta, &p, slog.String("signature", s.name), slog.Int("offset", start), slog.Bool("alert_only", s.alert))
		}
		if s.alert {
			return true
		}
		hit = s
		return false
	})
	if hit != nil {
		return dropVerdict(hit.notify, sourceroute.NoticeSignature)
	}
	return appliance.Pass()
}

func dropVerdict(notify bool, why sourceroute.NoticeReason) appliance.Verdict {
	if notify {
		return appliance.DropNotify(why)
	}
	return appliance.Drop()
}

// eventEnabled takes a token from the event log's rate limit. Callers
// check it before building a record, so a suppressed event costs nothing.
func (f *filter) eventEnabled() bool {
	return f.events != nil && f.events.Enabled(context.Background(), slog.LevelWarn)
}

func (f *filter) event(msg string, meta *appliance.FrameMeta, p *packet, attrs ...slog.Attr) {
	r := slog.NewRecord(time.Now(), slog.LevelWarn, msg, 0)
	r.AddAttrs(attrs...)
	r.AddAttrs(slog.String("from", meta.From.String()), slog.String("dm", meta.DM.String()))
	if p.ipVersion != 0 {
		r.AddAttrs(slog.String("proto", protoName(int(p.proto))), slog.String("src", p.src.addr(p.ipVersion).String()), slog.String("dst", p.dst.addr(p.ipVersion).String()))
		if p.hasPorts {
			r.AddAttrs(slog.Int("sport", int(p.sport)), slog.Int("dport", int(p.dport)))
		}
	} else {
		r.AddAttrs(slog.Int("ethertype", int(p.etherType)))
	}
	_ = f.events.Handle(context.Background(), r)
}

// hitStats is a counter as it appears in the JSON counters.
type hitStats struct {
	Name   string `json:"name,omitempty"`
	Action string `json:"action,omitempty"`
	Hits   uint64 `json:"hits"`
	Bytes  uint64 `json:"bytes"`
}

// filterStats is the filter's part of the JSON counters.
type filterStats struct {
	Default    hitStats          `json:"default"`
	Rules      []hitStats        `json:"rules"`
	Signatures []hitStats        `json:"signatures"`
	Malformed  map[string]uint64 `json:"malformed_inner"`
}

func (c *hitCounter) stats(name, action string) hitStats {
	return hitStats{Name: name, Action: action, Hits: c.hits.Load(), Bytes: c.bytes.Load()}
}

func (f *filter) stats() filterStats {
	s := filterStats{
		Default:    f.defaultHits.stats("", f.defaultAction.String()),
		Rules:      make([]hitStats, 0, len(f.rules)),
		Signatures: make([]hitStats, 0, len(f.signatures)),
		Malformed:  make(map[string]uint64),
	}
	for _, r := range f.rules {
		s.Rules = append(s.Rules, r.counter.stats(r.name, r.action.String()))
	}
	for _, sig := range f.signatures {
		a := "drop"
		if sig.alert {
			a = "alert"
		}
		s.Signatures = append(s.Signatures, sig.counter.stats(sig.name, a))
	}
	for why := parsedOK + 1; why < numMalformedReasons; why++ {
		if n := f.malformedBy[why].Load(); n > 0 {
			s.Malformed[why.String()] = n
		}
	}
	return s
}
