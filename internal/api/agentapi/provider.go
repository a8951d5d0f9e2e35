package agentapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/config"
)

// Agent is what the provider reads from the control loop; *agent.Agent
// satisfies it.
type Agent interface {
	Guests() []agent.GuestInfo
	Appliances() []agent.ApplianceInfo
	Events(seq uint64) ([]agent.Event, <-chan struct{})
	Config() *config.Config
	Ready() <-chan struct{}
}

// Libvirt is what the provider reads from the connection; *hypervisor.Conn
// satisfies it.
type Libvirt interface {
	URI() string
	Connected() bool
	Reconnects() uint64
	DroppedEvents() uint64
	ListDomains(ctx context.Context) ([]hypervisor.Domain, error)
	Metadata(ctx context.Context, uuid, namespace string) (string, error)
}

// Flows is the distribution manager's streams database as operators see
// it. Until the DM runs there is none, and the API says so.
type Flows interface {
	// Flows lists the flows of one guest, or all when guest is empty.
	Flows(ctx context.Context, guest string) ([]api.Flow, error)
	// FlowCount is the number of flows, without listing them.
	FlowCount() int
}

// Utilisation reports an appliance instance's recent CPU utilisation;
// *CPUSampler is one.
type Utilisation interface {
	CPUUtilisation(uuid string) (float64, bool)
}

// Sources is everything the provider reads. Agent and Libvirt are
// required; Flows and Utilisation may be nil.
type Sources struct {
	Agent       Agent
	Libvirt     Libvirt
	Flows       Flows
	Utilisation Utilisation
	Version     string
	StartedAt   time.Time
}

// NoDataplane is the note that explains an empty flow list before the
// distribution manager exists or while it is stopped.
const NoDataplane = "dataplane not running: there are no flows to show"

// Provider implements api.Provider on top of the running daemon.
type Provider struct{ s Sources }

// The daemon's real components satisfy the interfaces; the compiler checks.
var (
	_ api.Provider = (*Provider)(nil)
	_ Agent        = (*agent.Agent)(nil)
	_ Libvirt      = (*hypervisor.Conn)(nil)
	_ CPUTimer     = (*hypervisor.Conn)(nil)
	_ Utilisation  = (*CPUSampler)(nil)
)

// New returns a provider reading from s.
func New(s Sources) *Provider { return &Provider{s: s} }

// Status reports health, the libvirt connection and counts.
func (p *Provider) Status(ctx context.Context) (api.Status, error) {
	if err := ctx.Err(); err != nil {
		return api.Status{}, err
	}
	cfg := p.s.Agent.Config()
	st := api.Status{
		AgentVersion: p.s.Version,
		StartedAt:    p.s.StartedAt,
		Ready:        isClosed(p.s.Agent.Ready()),
		Libvirt: api.LibvirtStatus{
			URI:           p.s.Libvirt.URI(),
			Connected:     p.s.Libvirt.Connected(),
			Reconnects:    p.s.Libvirt.Reconnects(),
			DroppedEvents: p.s.Libvirt.DroppedEvents(),
		},
		Dataplane: api.Dataplane{Note: NoDataplane},
		Config:    api.ConfigStatus{Summary: cfg.Summary(), Files: slices.Clone(cfg.Files)},
	}
	if p.s.Flows != nil {
		st.Dataplane = api.Dataplane{Running: true, Flows: p.s.Flows.FlowCount()}
	}
	for _, g := range p.s.Agent.Guests() {
		st.Counts.Guests++
		switch g.State {
		case agent.GuestGated:
			st.Counts.GuestsGated++
		case agent.GuestInspected:
			st.Counts.GuestsInspected++
		default:
			st.Counts.GuestsUnmanaged++
		}
		if g.LastError != "" {
			st.Counts.GuestsWithErrors++
		}
	}
	for _, a := range p.s.Agent.Appliances() {
		st.Counts.Appliances++
		if a.State == hypervisor.StateRunning.String() {
			st.Counts.AppliancesRunning++
		}
	}
	st.Health = health(st)
	return st, nil
}

func health(st api.Status) string {
	switch {
	case !st.Libvirt.Connected:
		return api.HealthDegraded
	case !st.Ready:
		return api.HealthStarting
	}
	return api.HealthOK
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Guests converts the agent's guest snapshot.
func (p *Provider) Guests(ctx context.Context) ([]api.Guest, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	in := p.s.Agent.Guests()
	out := make([]api.Guest, 0, len(in))
	for _, g := range in {
		out = append(out, guestOf(g))
	}
	return out, nil
}

func guestOf(g agent.GuestInfo) api.Guest {
	return api.Guest{
		Name: g.Name, UUID: g.UUID, State: string(g.State), Policy: g.Policy,
		Chain: slices.Clone(g.Chain), Reason: g.Reason, LastError: g.LastError, Since: g.Since,
	}
}

// Appliances converts the agent's appliance snapshot, adding health and
// utilisation, sorted by appliance and index.
func (p *Provider) Appliances(ctx context.Context) ([]api.Appliance, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	in := p.s.Agent.Appliances()
	out := make([]api.Appliance, 0, len(in))
	for _, a := range in {
		o := api.Appliance{
			Appliance: a.Appliance, Index: a.Index, Name: a.Name, UUID: a.UUID, State: a.State,
			Health: api.HealthDown, MACs: slices.Clone(a.MACs), Guests: a.Guests,
		}
		if a.State == hypervisor.StateRunning.String() {
			o.Health = api.HealthOK
		}
		if p.s.Utilisation != nil {
			if u, ok := p.s.Utilisation.CPUUtilisation(a.UUID); ok {
				o.CPUUtilisation = &u
			}
		}
		out = append(out, o)
	}
	slices.SortFunc(out, func(x, y api.Appliance) int {
		if c := strings.Compare(x.Appliance, y.Appliance); c != 0 {
			return c
		}
		return x.Index - y.Index
	})
	return out, nil
}

// Flows lists the dataplane's flows; with no dataplane, an empty list and
// a note.
func (p *Provider) Flows(ctx context.Context, guest string) (api.FlowList, error) {
	if err := ctx.Err(); err != nil {
		return api.FlowList{}, err
	}
	if guest != "" && !slices.ContainsFunc(p.s.Agent.Guests(), func(g agent.GuestInfo) bool { return g.Name == guest }) {
		return api.FlowList{}, fmt.Errorf("%w: no guest named %q", api.ErrNotFound, guest)
	}
	if p.s.Flows == nil {
		return api.FlowList{Note: NoDataplane}, nil
	}
	fs, err := p.s.Flows.Flows(ctx, guest)
	if err != nil {
		return api.FlowList{}, fmt.Errorf("list flows: %w", err)
	}
	return api.FlowList{Flows: fs}, nil
}

// Events converts the agent's event log.
func (p *Provider) Events(after uint64) ([]api.Event, <-chan struct{}) {
	in, more := p.s.Agent.Events(after)
	out := make([]api.Event, 0, len(in))
	for _, e := range in {
		out = append(out, api.Event{Seq: e.Seq, Time: e.Time, Kind: string(e.Kind), Guest: e.Guest, Appliance: e.Appliance, Message: e.Message})
	}
	return out, more
}

// Explain resolves the domain's policy from its metadata binding and the
// configuration in force, and adds what the agent currently thinks of it.
func (p *Provider) Explain(ctx context.Context, domain string) (api.Explanation, error) {
	dom, err := p.lookup(ctx, domain)
	if err != nil {
		return api.Explanation{}, err
	}
	for _, a := range p.s.Agent.Appliances() {
		if a.UUID == dom.UUID {
			e := api.Explanation{
				Domain: dom.Name, UUID: dom.UUID, Appliance: a.Appliance, Matched: api.MatchedNone,
				Reason:     fmt.Sprintf("instance %d of appliance %q, which vsagent owns: policies never apply to appliances", a.Index, a.Appliance),
				Candidates: []api.Candidate{}, Default: []api.ChainStep{}, Classifiers: []api.Classified{},
			}
			return e, nil
		}
	}
	bound, bindErr, err := p.Binding(ctx, dom.UUID)
	if err != nil {
		return api.Explanation{}, err
	}
	e := api.Explain(p.s.Agent.Config(), dom.Name, bound, bindErr)
	e.UUID = dom.UUID
	for _, g := range p.s.Agent.Guests() {
		if g.UUID == dom.UUID {
			ag := guestOf(g)
			e.Agent = &ag
		}
	}
	return e, nil
}

func (p *Provider) lookup(ctx context.Context, name string) (hypervisor.Domain, error) {
	doms, err := p.s.Libvirt.ListDomains(ctx)
	if err != nil {
		return hypervisor.Domain{}, libvirtFailure("list domains", err)
	}
	for _, d := range doms {
		if d.Name == name {
			return d, nil
		}
	}
	return hypervisor.Domain{}, fmt.Errorf("%w: libvirt has no domain named %q", api.ErrNotFound, name)
}

// Binding reads the policy that a domain's metadata binding names: "" when
// it has none, and bindErr when the element is there but unreadable (which
// gates the guest). err reports that libvirt could not be asked.
func (p *Provider) Binding(ctx context.Context, uuid string) (policy string, bindErr, err error) {
	raw, err := p.s.Libvirt.Metadata(ctx, uuid, hypervisor.BindingNamespace)
	if errors.Is(err, hypervisor.ErrNoMetadata) {
		return "", nil, nil
	}
	if err != nil {
		return "", nil, libvirtFailure("read the policy binding", err)
	}
	policy, bindErr = config.ParseBinding(raw)
	return policy, bindErr, nil
}

func libvirtFailure(what string, err error) error {
	switch {
	case errors.Is(err, hypervisor.ErrNotFound):
		return fmt.Errorf("%w: %s: %w", api.ErrNotFound, what, err)
	case errors.Is(err, hypervisor.ErrDisconnected), errors.Is(err, hypervisor.ErrClosed):
		return fmt.Errorf("%w: %s: %w", api.ErrUnavailable, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
