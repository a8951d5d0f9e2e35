package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/vsagent/vsagent/sourceroute"
)

// Events of instance health.
const (
	// EventApplianceSilent: an instance took frames and returned none while
	// its flows timed out, or missed probe_misses health probes in a row.
	EventApplianceSilent EventKind = "appliance-silent"
	// EventApplianceRecreated: a failed or silent instance was destroyed,
	// undefined and defined anew from its appliance's template.
	EventApplianceRecreated EventKind = "appliance-recreated"
)

// HealthMarker takes an instance (by domain UUID) out of the dataplane's
// choices while it is unhealthy and puts it back; *DistributionManager is
// one, and also provides the per-instance counters silence is judged by.
type HealthMarker interface {
	SetHealthy(ctx context.Context, uuid string, healthy bool) error
}

// unhealthyMarks tells whether the dataplane itself took an instance out
// (its health probes found it silent); *DistributionManager is one.
type unhealthyMarks interface {
	markedUnhealthy(uuid string) bool
}

// silenceReading is an instance's cumulative frame counters at a poll.
type silenceReading struct {
	sent, answered, timeouts uint64
}

// checkSilence finds running instances that do not answer: the
// distribution manager's health probes went unanswered probe_misses times
// in a row (the DM has then taken the instance out already), or frames
// were sent to it since the last poll and none came back, no drop notice
// either, while return timeouts were blamed on it. Such an instance is
// marked unhealthy — its flows fail over to a twin, or meet on_failure —
// and recreated from its template. It is marked healthy again once a probe
// has gone through the new instance (without probe counters: at the next
// poll that finds it running).
func (s *Autoscaler) checkSilence(ctx context.Context, running []ownedDomain) error {
	dm, ok := s.opts.Health.(instanceCounters)
	if !ok {
		return nil
	}
	marks, _ := s.opts.Health.(unhealthyMarks)
	misses := uint32(max(s.a.Config().Dataplane.ProbeMisses, 1))
	counters, _ := dm.instanceCounters()
	var errs []error
	seen := make(map[string]bool, len(running))
	for _, d := range running {
		seen[d.UUID] = true
		c := counters[d.Name]
		if since, ok := s.recovering[d.UUID]; ok {
			if !probedSince(c, since) {
				continue // no probe through the new instance yet
			}
			delete(s.recovering, d.UUID)
			delete(s.silence, d.UUID) // a fresh start: judge from here
			if err := s.opts.Health.SetHealthy(ctx, d.UUID, true); err != nil {
				errs = append(errs, err)
			}
			s.log.Info("appliance instance healthy again", "domain", d.Name)
			continue
		}
		prev, had := s.silence[d.UUID]
		s.silence[d.UUID] = readingOf(c)
		marked := marks != nil && marks.markedUnhealthy(d.UUID)
		msg := silence(c, prev, had, misses, marked)
		if msg == "" {
			continue
		}
		s.log.Warn("appliance instance silent: failing its flows over and recreating it", "domain", d.Name, "detail", msg)
		s.a.recordEvent(Event{Kind: EventApplianceSilent, Appliance: d.Name, Message: msg})
		if err := s.opts.Health.SetHealthy(ctx, d.UUID, false); err != nil {
			errs = append(errs, err)
			continue
		}
		if s.draining[d.Name] {
			continue // its flows move now; the drain then deletes it
		}
		if err := s.recreate(ctx, d, "was silent: "+msg); err != nil {
			errs = append(errs, err)
		}
	}
	for uuid := range s.silence {
		if !seen[uuid] {
			delete(s.silence, uuid)
		}
	}
	for uuid := range s.recovering {
		if _, ok := s.a.owned.lookup(uuid); !ok {
			delete(s.recovering, uuid) // gone before it was trusted again
		}
	}
	return errors.Join(errs...)
}

func readingOf(c sourceroute.InstanceCounters) silenceReading {
	return silenceReading{sent: c.Sent, answered: c.Returned + c.Notices, timeouts: c.Timeouts}
}

// silence says why an instance counts as silent, or "" if it does not:
// probe_misses probes in a row unanswered, or the dataplane's own mark
// (its probes found it), or frames sent since the last poll (prev, if
// had) with none back, no notice, and return timeouts blamed on it.
func silence(c sourceroute.InstanceCounters, prev silenceReading, had bool, misses uint32, marked bool) string {
	cur := readingOf(c)
	switch {
	case c.ProbeMissStreak >= misses || marked:
		return fmt.Sprintf("%d health probes in a row unanswered", c.ProbeMissStreak)
	case had && cur.sent > prev.sent && cur.answered == prev.answered && cur.timeouts > prev.timeouts:
		return fmt.Sprintf("%d frames sent, none returned, %d return timeouts since the last poll", cur.sent-prev.sent, cur.timeouts-prev.timeouts)
	}
	return ""
}

// probedSince reports whether a probe went through an instance since it
// had answered `since` of them (its count when it was recreated), with no
// miss after. An instance the dataplane does not probe passes at once.
func probedSince(c sourceroute.InstanceCounters, since uint64) bool {
	return c.ProbesSent == 0 || (c.ProbeMissStreak == 0 && c.ProbesAnswered != since)
}

// recreate replaces a failed or silent instance by a new one from its
// appliance's template: destroyed and undefined (after libvirt confirms
// vsagent's ownership element, as garbage collection does), then defined
// with the same index, hence the same name and, MACs being derived from
// it, the same MACs, and started. With health probes, the new instance is
// kept out of the flows' choices until a probe went through it.
func (s *Autoscaler) recreate(ctx context.Context, d ownedDomain, why string) error {
	a := s.a
	ac, ok := a.Config().Appliance(d.Owner.Appliance)
	if !ok {
		return fmt.Errorf("recreate %s: appliance %q is not in the configuration", d.Name, d.Owner.Appliance)
	}
	a.provisionMu.Lock()
	removed, err := a.removeAppliance(ctx, d)
	if err != nil || (!removed && a.owned.isForeign(d.UUID)) {
		a.provisionMu.Unlock()
		if err == nil {
			err = fmt.Errorf("%s no longer carries vsagent's ownership element", d.Name)
		}
		return fmt.Errorf("recreate %s: %w", d.Name, err)
	}
	var name string
	doms, err := a.scanAppliances(ctx)
	if err == nil {
		names := make(map[string]bool, len(doms))
		for _, dom := range doms {
			names[dom.Name] = true
		}
		name, err = a.defineAndStart(ctx, ac, d.Owner.Index, names, s.log)
	}
	a.provisionMu.Unlock()
	if err != nil {
		// The guests' reconcile provisions the appliance again if they
		// are left without any instance; the next poll retries otherwise.
		s.requeueGuests(d.Owner.Appliance)
		return fmt.Errorf("recreate %s: %w", d.Name, err)
	}
	if uuid := s.uuidOf(name); uuid != "" {
		if c, ok := s.opts.Health.(instanceCounters); ok {
			counters, _ := c.instanceCounters()
			s.recovering[uuid] = counters[name].ProbesAnswered
			if err := s.opts.Health.SetHealthy(ctx, uuid, false); err != nil {
				s.log.Warn("cannot keep the recreated instance out of the flows' choices until probed", "domain", name, "error", err)
			}
		} else if s.opts.Health != nil {
			s.recovering[uuid] = 0
		}
	}
	s.log.Warn("appliance instance recreated from its template", "domain", name, "why", why)
	s.a.recordEvent(Event{Kind: EventApplianceRecreated, Appliance: name, Message: why})
	s.requeueGuests(d.Owner.Appliance)
	return nil
}

func (s *Autoscaler) uuidOf(name string) string {
	for _, d := range s.a.owned.all() {
		if d.Name == name {
			return d.UUID
		}
	}
	return ""
}

// failed handles an instance that guests need and that stopped or
// crashed: its guests' reconcile keeps it in their plans as failed (its
// flows fail over to a twin, or meet on_failure), and it is recreated.
func (s *Autoscaler) failed(ctx context.Context, d ownedDomain) error {
	if s.draining[d.Name] {
		return nil // about to go anyway
	}
	s.a.recordEvent(Event{Kind: EventApplianceFailed, Appliance: d.Name, Message: "state " + d.State.String()})
	return s.recreate(ctx, d, "was "+d.State.String())
}
