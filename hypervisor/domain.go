package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// State is a domain's run state as libvirt reports it.
type State int

const (
	StateOther State = iota
	StateRunning
	StatePaused
	StateShutoff
	StateCrashed
	// StateShutdown means a shutdown is in progress; the domain still runs.
	StateShutdown
	StateBlocked
	StatePMSuspended
)

var stateNames = [...]string{
	StateOther:       "other",
	StateRunning:     "running",
	StatePaused:      "paused",
	StateShutoff:     "shut off",
	StateCrashed:     "crashed",
	StateShutdown:    "shutting down",
	StateBlocked:     "blocked",
	StatePMSuspended: "pm-suspended",
}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "state " + strconv.Itoa(int(s))
}

func stateOf(s libvirt.DomainState) State {
	switch s {
	case libvirt.DOMAIN_RUNNING:
		return StateRunning
	case libvirt.DOMAIN_PAUSED:
		return StatePaused
	case libvirt.DOMAIN_SHUTOFF:
		return StateShutoff
	case libvirt.DOMAIN_CRASHED:
		return StateCrashed
	case libvirt.DOMAIN_SHUTDOWN:
		return StateShutdown
	case libvirt.DOMAIN_BLOCKED:
		return StateBlocked
	case libvirt.DOMAIN_PMSUSPENDED:
		return StatePMSuspended
	}
	return StateOther
}

// Active reports whether a QEMU process exists for the domain.
func (s State) Active() bool {
	switch s {
	case StateShutoff, StateOther:
		return false
	}
	return true
}

// Domain is a snapshot of one domain's identity and state.
type Domain struct {
	UUID, Name string
	State      State
	// Reason is libvirt's state reason (for example VIR_DOMAIN_PAUSED_MIGRATION),
	// to be read together with State.
	Reason     int
	Persistent bool
	// ID is the hypervisor's id of a running domain, 0 when inactive.
	ID uint
}

func describe(d *libvirt.Domain) (Domain, error) {
	var out Domain
	var err error
	if out.UUID, err = d.GetUUIDString(); err != nil {
		return Domain{}, err
	}
	if out.Name, err = d.GetName(); err != nil {
		return Domain{}, err
	}
	st, reason, err := d.GetState()
	if err != nil {
		return Domain{}, err
	}
	out.State, out.Reason = stateOf(st), reason
	if out.Persistent, err = d.IsPersistent(); err != nil {
		return Domain{}, err
	}
	if out.State.Active() {
		// An inactive domain's id is -1, which the binding reports as an error.
		if id, err := d.GetID(); err == nil {
			out.ID = id
		}
	}
	return out, nil
}

func currentState(d *libvirt.Domain) (State, error) {
	st, _, err := d.GetState()
	return stateOf(st), err
}

// ListDomains returns every domain, active and inactive. A domain that
// disappears while being listed is left out.
func (c *Conn) ListDomains(ctx context.Context) ([]Domain, error) {
	var out []Domain
	err := c.do(ctx, "list domains", "", func(v *libvirt.Connect) error {
		doms, err := v.ListAllDomains(0)
		if err != nil {
			return err
		}
		defer func() {
			for i := range doms {
				doms[i].Free()
			}
		}()
		out = make([]Domain, 0, len(doms))
		for i := range doms {
			d, err := describe(&doms[i])
			if hasCode(err, libvirt.ERR_NO_DOMAIN) {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	return out, err
}

// Lookup returns the domain with the given UUID or an error matching
// ErrNotFound.
func (c *Conn) Lookup(ctx context.Context, uuid string) (Domain, error) {
	var out Domain
	err := c.withDomain(ctx, "lookup", uuid, func(d *libvirt.Domain) error {
		var err error
		out, err = describe(d)
		return err
	})
	return out, err
}

// DomainXML returns the domain's definition: the live one of a running
// domain, or with inactive the persistent one (what the next boot uses).
func (c *Conn) DomainXML(ctx context.Context, uuid string, inactive bool) (*libvirtxml.Domain, error) {
	var flags libvirt.DomainXMLFlags
	if inactive {
		flags = libvirt.DOMAIN_XML_INACTIVE
	}
	var out libvirtxml.Domain
	err := c.withDomain(ctx, "get xml", uuid, func(d *libvirt.Domain) error {
		doc, err := d.GetXMLDesc(flags)
		if err != nil {
			return err
		}
		if err := out.Unmarshal(doc); err != nil {
			return fmt.Errorf("decode domain xml: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Define creates or updates a persistent domain definition.
func (c *Conn) Define(ctx context.Context, dom *libvirtxml.Domain) (Domain, error) {
	if dom == nil {
		return Domain{}, errors.New("hypervisor: define: nil domain")
	}
	doc, err := dom.Marshal()
	if err != nil {
		return Domain{}, fmt.Errorf("hypervisor: define %s: encode xml: %w", dom.Name, err)
	}
	var out Domain
	err = c.do(ctx, "define", dom.Name, func(v *libvirt.Connect) error {
		d, err := v.DomainDefineXML(doc)
		if err != nil {
			return err
		}
		defer d.Free()
		out, err = describe(d)
		return err
	})
	return out, err
}

// Start boots a defined domain. Starting an active domain (running or
// paused) does nothing and succeeds.
func (c *Conn) Start(ctx context.Context, uuid string) error {
	return c.withDomain(ctx, "start", uuid, func(d *libvirt.Domain) error {
		return converge(d, State.Active, d.Create)
	})
}

// Suspend pauses the domain's vCPUs. An already paused domain is left alone;
// one that is not running yields ErrNotRunning.
func (c *Conn) Suspend(ctx context.Context, uuid string) error {
	return c.withDomain(ctx, "suspend", uuid, func(d *libvirt.Domain) error {
		if err := requireActive(d); err != nil {
			return err
		}
		return converge(d, func(s State) bool { return s == StatePaused }, d.Suspend)
	})
}

// Resume lets a paused domain run. An already running domain is left alone;
// one that is not running yields ErrNotRunning.
func (c *Conn) Resume(ctx context.Context, uuid string) error {
	return c.withDomain(ctx, "resume", uuid, func(d *libvirt.Domain) error {
		if err := requireActive(d); err != nil {
			return err
		}
		return converge(d, func(s State) bool { return s == StateRunning || s == StateBlocked }, d.Resume)
	})
}

// Destroy stops the domain at once. A domain that is not running, or that
// does not exist (a destroyed transient domain is gone), is fine.
func (c *Conn) Destroy(ctx context.Context, uuid string) error {
	err := c.withDomain(ctx, "destroy", uuid, func(d *libvirt.Domain) error {
		err := converge(d, func(s State) bool { return !s.Active() }, d.Destroy)
		if hasCode(err, libvirt.ERR_NO_DOMAIN) {
			return nil
		}
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// Undefine removes the domain's persistent definition together with its
// managed-save image, snapshot and checkpoint metadata and NVRAM. A running
// domain keeps running as a transient one (destroy it to make it vanish); a
// domain that is transient already or does not exist is fine.
func (c *Conn) Undefine(ctx context.Context, uuid string) error {
	err := c.withDomain(ctx, "undefine", uuid, func(d *libvirt.Domain) error {
		persistent, err := d.IsPersistent()
		if err != nil || !persistent {
			return err
		}
		const everything = libvirt.DOMAIN_UNDEFINE_MANAGED_SAVE |
			libvirt.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
			libvirt.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA |
			libvirt.DOMAIN_UNDEFINE_NVRAM
		err = d.UndefineFlags(everything)
		if flagsRejected(err) {
			// Drivers without those features (the test driver among them)
			// refuse the flags outright; there is then nothing to clean up.
			err = d.Undefine()
		}
		if hasCode(err, libvirt.ERR_NO_DOMAIN) {
			return nil
		}
		if err != nil {
			if persistent, perr := d.IsPersistent(); perr == nil && !persistent {
				return nil
			}
		}
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// SetVCPUs sets the number of active vCPUs in the running domain (if it
// runs) and in its persistent definition (if it has one). Growing a running
// domain needs hot-pluggable vCPUs below its maximum.
func (c *Conn) SetVCPUs(ctx context.Context, uuid string, n uint) error {
	return c.withDomain(ctx, "set vcpus", uuid, func(d *libvirt.Domain) error {
		return applyLiveAndConfig(d, libvirt.DOMAIN_VCPU_LIVE, libvirt.DOMAIN_VCPU_CONFIG, func(flags libvirt.DomainVcpuFlags) error {
			return d.SetVcpusFlags(n, flags)
		})
	})
}

// SetMemory sets the domain's current memory in KiB, live (through the
// balloon, so the domain needs one) and in its persistent definition.
func (c *Conn) SetMemory(ctx context.Context, uuid string, kib uint64) error {
	return c.withDomain(ctx, "set memory", uuid, func(d *libvirt.Domain) error {
		return applyLiveAndConfig(d, libvirt.DOMAIN_MEM_LIVE, libvirt.DOMAIN_MEM_CONFIG, func(flags libvirt.DomainMemoryModFlags) error {
			return d.SetMemoryFlags(kib, flags)
		})
	})
}

// CPUTime returns the CPU time the domain has consumed since it started and
// its number of vCPUs; utilisation is the difference of two samples divided
// by elapsed time and vCPUs.
func (c *Conn) CPUTime(ctx context.Context, uuid string) (time.Duration, uint, error) {
	var used time.Duration
	var vcpus uint
	err := c.withDomain(ctx, "cpu time", uuid, func(d *libvirt.Domain) error {
		info, err := d.GetInfo()
		if err != nil {
			return err
		}
		used, vcpus = time.Duration(info.CpuTime), info.NrVirtCpu
		return nil
	})
	return used, vcpus, err
}

// converge runs op unless the domain is already where op would take it, and
// forgives op's failure if the domain got there anyway (someone else did the
// same thing concurrently). Drivers disagree on the error codes for "already
// paused" and the like, so the state, not the code, decides.
func converge(d *libvirt.Domain, done func(State) bool, op func() error) error {
	st, err := currentState(d)
	if err != nil {
		return err
	}
	if done(st) {
		return nil
	}
	opErr := op()
	if opErr == nil {
		return nil
	}
	if st, err := currentState(d); err == nil && done(st) {
		return nil
	}
	return opErr
}

func requireActive(d *libvirt.Domain) error {
	st, err := currentState(d)
	if err != nil {
		return err
	}
	if !st.Active() {
		return ErrNotRunning
	}
	return nil
}

// applyLiveAndConfig applies a change to the running domain if it runs and to
// its persistent definition if it has one: transient domains have no
// definition and inactive ones no live state, and libvirt refuses flags that
// name what does not exist. Some drivers (the test driver for memory) refuse
// LIVE|CONFIG together, so a refusal of the pair is retried one at a time. A
// domain that starts or stops in between is re-examined once.
func applyLiveAndConfig[F ~int | ~uint](d *libvirt.Domain, liveFlag, configFlag F, set func(F) error) error {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		live, config, ierr := impact(d)
		if ierr != nil {
			return ierr
		}
		var flags F
		if live {
			flags |= liveFlag
		}
		if config {
			flags |= configFlag
		}
		err = set(flags)
		if err != nil && live && config && flagsRejected(err) {
			if err = set(liveFlag); err == nil {
				err = set(configFlag)
			}
		}
		if !hasCode(err, libvirt.ERR_OPERATION_INVALID) {
			return err
		}
	}
	return err
}

func impact(d *libvirt.Domain) (live, config bool, err error) {
	active, err := d.IsActive()
	if err != nil {
		return false, false, err
	}
	persistent, err := d.IsPersistent()
	if err != nil {
		return false, false, err
	}
	return active, persistent, nil
}

// AboutToRun reports whether the domain is paused only on its way to
// running: QEMU starts with its vCPUs stopped and libvirt resumes them when
// the start (or an incoming migration) completes, unless asked to keep the
// domain paused. A gate must treat such a domain as running — pause it and
// resume it later — not as one its operator paused.
func (d Domain) AboutToRun() bool {
	if d.State != StatePaused {
		return false
	}
	switch libvirt.DomainPausedReason(d.Reason) {
	case libvirt.DOMAIN_PAUSED_STARTING_UP, libvirt.DOMAIN_PAUSED_MIGRATION:
		return true
	}
	return false
}
