package agent

import (
	"context"
	"time"

	"github.com/vsagent/vsagent/sourceroute"
)

// instanceMark is what the autoscaler has said about an appliance
// instance beyond the guests' plans.
type instanceMark struct {
	draining  bool // no new flows; pinned ones stay
	unhealthy bool // no flows at all: pinned ones fail over
}

// SetDraining marks an appliance instance (by domain UUID) as draining:
// the engine gives it no new flows and leaves the flows pinned to it where
// they are, so that scaling in never moves a live flow.
func (d *DistributionManager) SetDraining(ctx context.Context, uuid string, draining bool) error {
	return d.mark(ctx, uuid, func(m *instanceMark) { m.draining = draining })
}

// SetHealthy marks an appliance instance (by domain UUID) as unhealthy or
// healthy again. An unhealthy instance's flows fail over to a healthy twin,
// or meet the appliance's on_failure when there is none.
func (d *DistributionManager) SetHealthy(ctx context.Context, uuid string, healthy bool) error {
	return d.mark(ctx, uuid, func(m *instanceMark) { m.unhealthy = !healthy })
}

func (d *DistributionManager) mark(ctx context.Context, uuid string, set func(*instanceMark)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.marks == nil {
		d.marks = make(map[string]instanceMark)
	}
	m := d.marks[uuid]
	set(&m)
	d.marks[uuid] = m
	// Marks of instances that no guest uses any more, and marks that say
	// nothing, are dropped here, so the set stays as small as what it
	// describes.
	inUse := map[string]bool{}
	for _, g := range d.guests {
		for _, insts := range g.appliances {
			for _, inst := range insts {
				inUse[inst.UUID] = true
			}
		}
	}
	for id, m := range d.marks {
		if m == (instanceMark{}) || (!inUse[id] && id != uuid) {
			delete(d.marks, id)
		}
	}
	return d.syncLocked(ctx)
}

func (d *DistributionManager) instanceCounters() (map[string]sourceroute.InstanceCounters, map[string]int64) {
	return d.engine.Counters().Instances, d.engine.InstanceFlows()
}

// onEngineEvent passes the engine's events on, and takes an instance the
// engine found silent by its health probes out of the flows' choices at
// once, without waiting for the autoscaler's next poll (which recreates
// it, see checkSilence).
func (d *DistributionManager) onEngineEvent(ev sourceroute.Event) {
	if ev.Kind == sourceroute.EventApplianceSilent {
		// Not on the engine's event goroutine: an update waits for the
		// data path, and events must keep flowing meanwhile.
		go d.markSilent(ev.Instance)
	}
	if d.cfg.OnEvent != nil {
		d.cfg.OnEvent(ev)
	}
}

func (d *DistributionManager) markSilent(instance string) {
	uuid := d.instanceUUID(instance)
	if uuid == "" {
		return // no guest uses it any more
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.SetHealthy(ctx, uuid, false); err != nil {
		d.log.Warn("cannot take a silent appliance instance out of the flows' choices", "instance", instance, "error", err)
		return
	}
	d.log.Warn("appliance instance silent: health probes unanswered; its flows fail over or meet on_failure", "instance", instance)
}

func (d *DistributionManager) instanceUUID(name string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, g := range d.guests {
		for _, insts := range g.appliances {
			for _, inst := range insts {
				if inst.Name == name {
					return inst.UUID
				}
			}
		}
	}
	return ""
}

// markedUnhealthy reports whether the instance is out of the flows'
// choices by a mark: the autoscaler's, or the probes' (markSilent).
func (d *DistributionManager) markedUnhealthy(uuid string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.marks[uuid].unhealthy
}
