package agent

import (
	"context"
	"errors"
	"fmt"
)

// EventApplianceSilent: an instance took frames and returned none while
// its flows timed out.
const EventApplianceSilent EventKind = "appliance-silent"

// HealthMarker takes an instance (by domain UUID) out of the dataplane's
// choices while it is unhealthy and puts it back; *DistributionManager is
// one, and also provides the per-instance counters silence is judged by.
type HealthMarker interface {
	SetHealthy(ctx context.Context, uuid string, healthy bool) error
}

// silenceReading is an instance's cumulative frame counters at a poll.
type silenceReading struct {
	sent, answered, timeouts uint64
}

// checkSilence finds running instances that the distribution manager sent
// frames to since the last poll and that answered none of them (no frame
// back, no drop notice) while return timeouts were blamed on them: a hung
// appliance that libvirt still calls running. Such an instance is marked
// unhealthy at once — its flows fail over to a twin, or meet on_failure —
// and recreated by a destroy and start; it is marked healthy again at the
// first poll that finds it running after that.
func (s *Autoscaler) checkSilence(ctx context.Context, running []ownedDomain) error {
	dm, ok := s.opts.Health.(instanceCounters)
	if !ok {
		return nil
	}
	counters, _ := dm.instanceCounters()
	var errs []error
	seen := make(map[string]bool, len(running))
	for _, d := range running {
		seen[d.UUID] = true
		if s.recovering[d.UUID] {
			delete(s.recovering, d.UUID)
			delete(s.silence, d.UUID) // a fresh start: judge from here
			if err := s.opts.Health.SetHealthy(ctx, d.UUID, true); err != nil {
				errs = append(errs, err)
			}
			s.log.Info("appliance instance healthy again", "domain", d.Name)
			continue
		}
		c := counters[d.Name]
		cur := silenceReading{sent: c.Sent, answered: c.Returned + c.Notices, timeouts: c.Timeouts}
		prev, had := s.silence[d.UUID]
		s.silence[d.UUID] = cur
		if !had || cur.sent <= prev.sent || cur.answered != prev.answered || cur.timeouts <= prev.timeouts {
			continue
		}
		msg := fmt.Sprintf("%d frames sent, none returned, %d return timeouts since the last poll", cur.sent-prev.sent, cur.timeouts-prev.timeouts)
		s.log.Warn("appliance instance silent: failing its flows over and recreating it", "domain", d.Name, "detail", msg)
		s.a.recordEvent(Event{Kind: EventApplianceSilent, Appliance: d.Name, Message: msg})
		if err := s.opts.Health.SetHealthy(ctx, d.UUID, false); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := s.recreate(ctx, d); err != nil {
			errs = append(errs, err)
			continue
		}
		s.recovering[d.UUID] = true
	}
	for uuid := range s.silence {
		if !seen[uuid] {
			delete(s.silence, uuid)
		}
	}
	return errors.Join(errs...)
}

// recreate restarts a hung instance's domain: what runs in it starts from
// its image again.
func (s *Autoscaler) recreate(ctx context.Context, d ownedDomain) error {
	if err := s.a.hv.Destroy(ctx, d.UUID); err != nil {
		return fmt.Errorf("recreate %s: %w", d.Name, err)
	}
	if err := s.a.hv.Start(ctx, d.UUID); err != nil {
		return fmt.Errorf("recreate %s: %w", d.Name, err)
	}
	s.a.recordEvent(Event{Kind: EventApplianceRestart, Appliance: d.Name, Message: "was silent"})
	s.requeueGuests(d.Owner.Appliance)
	return nil
}
