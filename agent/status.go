package agent

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vsagent/vsagent/hypervisor"
)

// GuestState is where a guest stands with respect to inspection.
type GuestState string

const (
	GuestUnmanaged GuestState = "unmanaged" // no policy applies
	GuestGated     GuestState = "gated"     // held until its chain is ready
	GuestInspected GuestState = "inspected" // chain ready, traffic diverted
)

type guestStatus struct {
	Name      string
	UUID      string
	State     GuestState
	Policy    string
	Chain     []string
	Reason    string
	LastError string
	Since     time.Time
	needs     []string
}

// GuestInfo is a read-only snapshot of one guest for operators.
type GuestInfo struct {
	Name      string     `json:"name"`
	UUID      string     `json:"uuid"`
	State     GuestState `json:"state"`
	Policy    string     `json:"policy,omitempty"`
	Chain     []string   `json:"chain,omitempty"`
	Reason    string     `json:"reason"`
	LastError string     `json:"last_error,omitempty"`
	Since     time.Time  `json:"since"`
}

// ApplianceInfo is a read-only snapshot of one owned appliance domain.
type ApplianceInfo struct {
	Appliance string   `json:"appliance"`
	Index     int      `json:"index"`
	Name      string   `json:"name"`
	UUID      string   `json:"uuid"`
	State     string   `json:"state"`
	MACs      []string `json:"macs"`
	Guests    int      `json:"guests"`
}

func (a *Agent) setGuest(dom hypervisor.Domain, st guestStatus) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st.Name, st.UUID = dom.Name, dom.UUID
	old, ok := a.guests[dom.UUID]
	if ok && old.State == st.State {
		st.Since = old.Since
		st.needs = old.needs
	} else {
		st.Since = a.opts.Now()
		if ok {
			st.needs = old.needs
		}
	}
	a.guests[dom.UUID] = &st
}

// setNeeds records which appliances a guest needs; it reports whether the
// guest gave up any, which is when garbage collection has work.
func (a *Agent) setNeeds(uuid string, needs []string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	st, ok := a.guests[uuid]
	if !ok {
		if len(needs) == 0 {
			return false
		}
		st = &guestStatus{UUID: uuid, Since: a.opts.Now()}
		a.guests[uuid] = st
	}
	dropped := false
	for _, n := range st.needs {
		if !slices.Contains(needs, n) {
			dropped = true
		}
	}
	st.needs = slices.Clone(needs)
	return dropped
}

func (a *Agent) guestsNeeding(app string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for uuid, st := range a.guests {
		if slices.Contains(st.needs, app) {
			out = append(out, uuid)
		}
	}
	return out
}

func (a *Agent) neededAppliances() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]bool)
	for _, st := range a.guests {
		for _, n := range st.needs {
			out[n] = true
		}
	}
	return out
}

func (a *Agent) markSynced() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.synced {
		a.synced = true
		close(a.readyCh)
	}
}

// Guests returns a snapshot of every guest the agent has examined, sorted
// by name.
func (a *Agent) Guests() []GuestInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]GuestInfo, 0, len(a.guests))
	for _, st := range a.guests {
		if st.Name == "" {
			continue
		}
		out = append(out, GuestInfo{
			Name: st.Name, UUID: st.UUID, State: st.State, Policy: st.Policy,
			Chain: slices.Clone(st.Chain), Reason: st.Reason, LastError: st.LastError, Since: st.Since,
		})
	}
	slices.SortFunc(out, func(x, y GuestInfo) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// Appliances returns a snapshot of the appliance domains vsagent owns.
func (a *Agent) Appliances() []ApplianceInfo {
	owned := a.owned.all()
	out := make([]ApplianceInfo, 0, len(owned))
	for _, d := range owned {
		out = append(out, ApplianceInfo{
			Appliance: d.Owner.Appliance, Index: d.Owner.Index, Name: d.Name, UUID: d.UUID,
			State: d.State.String(), MACs: slices.Clone(d.MACs), Guests: len(a.guestsNeeding(d.Owner.Appliance)),
		})
	}
	return out
}

// EventKind names what happened, for operators and scripts.
type EventKind string

const (
	EventGated            EventKind = "gated"
	EventReleased         EventKind = "released"
	EventGateHeld         EventKind = "gate-held"
	EventGateTimeout      EventKind = "gate-timeout"
	EventApplianceDefined EventKind = "appliance-defined"
	EventApplianceStarted EventKind = "appliance-started"
	EventApplianceDeleted EventKind = "appliance-deleted"
	EventConfigApplied    EventKind = "config-applied"
	// From the distribution manager:
	EventDropNotice    EventKind = "drop-notice"    // an appliance dropped a frame and said why
	EventReturnTimeout EventKind = "return-timeout" // an appliance stopped returning a flow's frames
	EventGuestBlocked  EventKind = "guest-blocked"  // a guest's new flows are blocked (on_timeout = block)
	EventFailClosed    EventKind = "fail-closed"    // a guest's frames are dropped: its chain is not ready
	EventBypass        EventKind = "bypass"         // a chain step was skipped (on_failure = bypass)
)

// Event is one entry of the agent's event log.
type Event struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Kind      EventKind `json:"kind"`
	Guest     string    `json:"guest,omitempty"`
	Appliance string    `json:"appliance,omitempty"`
	Message   string    `json:"message,omitempty"`
}

// eventLog keeps the most recent events in a ring and wakes followers.
type eventLog struct {
	mu      sync.Mutex
	ring    []Event
	next    uint64
	changed chan struct{}
}

func newEventLog(size int) *eventLog {
	return &eventLog{ring: make([]Event, 0, size), changed: make(chan struct{})}
}

func (l *eventLog) add(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	e.Seq = l.next
	if len(l.ring) < cap(l.ring) {
		l.ring = append(l.ring, e)
	} else {
		copy(l.ring, l.ring[1:])
		l.ring[len(l.ring)-1] = e
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// since returns the events after seq and a channel closed on the next one.
func (l *eventLog) since(seq uint64) ([]Event, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	for _, e := range l.ring {
		if e.Seq > seq {
			out = append(out, e)
		}
	}
	return out, l.changed
}

func (a *Agent) recordEvent(e Event) {
	e.Time = a.opts.Now()
	a.events.add(e)
}

// Events returns the logged events after seq, and a channel that is closed
// when another arrives (for following).
func (a *Agent) Events(seq uint64) ([]Event, <-chan struct{}) { return a.events.since(seq) }

// Settled reports whether the agent has no work waiting or in progress: every
// event so far has been reconciled.
func (a *Agent) Settled() bool { return a.queue.idle() }
