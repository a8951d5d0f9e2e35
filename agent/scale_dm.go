package agent

import (
	"context"

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
