package agent

import (
	"context"

	"github.com/vsagent/vsagent/sourceroute"
)

// SetDraining marks an appliance instance (by domain UUID) as draining:
// the engine gives it no new flows and leaves the flows pinned to it where
// they are, so that scaling in never moves a live flow.
func (d *DistributionManager) SetDraining(ctx context.Context, uuid string, draining bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.draining == nil {
		d.draining = make(map[string]bool)
	}
	if draining {
		d.draining[uuid] = true
	} else {
		delete(d.draining, uuid)
	}
	// Marks of instances that no guest uses any more are dropped here, so
	// the set stays as small as the instances it describes.
	inUse := map[string]bool{}
	for _, g := range d.guests {
		for _, insts := range g.appliances {
			for _, inst := range insts {
				inUse[inst.UUID] = true
			}
		}
	}
	for id := range d.draining {
		if !inUse[id] && id != uuid {
			delete(d.draining, id)
		}
	}
	return d.syncLocked(ctx)
}

func (d *DistributionManager) instanceCounters() (map[string]sourceroute.InstanceCounters, map[string]int64) {
	return d.engine.Counters().Instances, d.engine.InstanceFlows()
}
