package api

import "time"

// Version is the API version this package serves and speaks; it is the
// first element of every request path.
const Version = "v1"

// DefaultSocket is where the daemon listens unless configured otherwise
// (the [agent] socket key).
const DefaultSocket = "/run/vsagent/vsagent.sock"

// Guest states as the agent reports them.
const (
	GuestUnmanaged = "unmanaged" // no policy applies
	GuestGated     = "gated"     // held until its chain is ready
	GuestInspected = "inspected" // chain ready, traffic diverted
)

// Status is the answer to GET /v1/status: is the agent healthy, is it
// talking to libvirt, and how much is it looking after.
type Status struct {
	APIVersion   string    `json:"api_version"`
	AgentVersion string    `json:"agent_version"`
	StartedAt    time.Time `json:"started_at"`
	// Health is HealthOK, HealthStarting (the first reconcile pass is not
	// done) or HealthDegraded (libvirt is unreachable).
	Health string `json:"health"`
	// Ready is true once the agent has reconciled every domain once since
	// it started; before that, guests' states may still change on their
	// own.
	Ready     bool          `json:"ready"`
	Libvirt   LibvirtStatus `json:"libvirt"`
	Dataplane Dataplane     `json:"dataplane"`
	Counts    Counts        `json:"counts"`
	Config    ConfigStatus  `json:"config"`
}

// LibvirtStatus describes the agent's libvirt connection.
type LibvirtStatus struct {
	URI       string `json:"uri"`
	Connected bool   `json:"connected"`
	// Reconnects counts connections re-established since the agent started.
	Reconnects uint64 `json:"reconnects"`
	// DroppedEvents counts libvirt events that overflowed the agent's queue;
	// each overflow is followed by a full resync, so nothing is lost, but a
	// growing number means the agent cannot keep up.
	DroppedEvents uint64 `json:"dropped_events"`
}

// Dataplane says whether the distribution manager is running.
type Dataplane struct {
	Running bool   `json:"running"`
	Flows   int    `json:"flows"`
	Note    string `json:"note,omitempty"`
}

// Counts summarises guests and appliance instances.
type Counts struct {
	Guests            int `json:"guests"`
	GuestsUnmanaged   int `json:"guests_unmanaged"`
	GuestsGated       int `json:"guests_gated"`
	GuestsInspected   int `json:"guests_inspected"`
	Appliances        int `json:"appliances"`
	AppliancesRunning int `json:"appliances_running"`
	GuestsWithErrors  int `json:"guests_with_errors"`
}

// ConfigStatus names the configuration in force.
type ConfigStatus struct {
	Summary string   `json:"summary"`
	Files   []string `json:"files"`
}

// Guest is one guest the agent has examined (GET /v1/guests).
type Guest struct {
	Name   string `json:"name"`
	UUID   string `json:"uuid"`
	State  string `json:"state"`
	Policy string `json:"policy,omitempty"`
	// Chain is the policy's default chain, in order; classifiers may send
	// some traffic through other chains (see Explanation).
	Chain []string `json:"chain,omitempty"`
	// Reason says why the guest has its policy (or none).
	Reason    string    `json:"reason"`
	LastError string    `json:"last_error,omitempty"`
	Since     time.Time `json:"since"`
}

// Appliance is one appliance instance (a domain vsagent defined from a
// template), GET /v1/appliances.
type Appliance struct {
	Appliance string   `json:"appliance"`
	Index     int      `json:"index"`
	Name      string   `json:"name"`
	UUID      string   `json:"uuid"`
	State     string   `json:"state"`
	Health    string   `json:"health"`
	MACs      []string `json:"macs"`
	// Guests counts the guests whose policies need this appliance type.
	Guests int `json:"guests"`
	// CPUUtilisation is the instance's CPU use over the last sampling
	// interval as a fraction of its vCPUs (0..1); absent until sampled.
	CPUUtilisation *float64 `json:"cpu_utilisation,omitempty"`
}

// Health values of Status and Appliance.
const (
	HealthOK       = "ok"       // agent: working; appliance: running
	HealthStarting = "starting" // agent: first reconcile pass in progress
	HealthDegraded = "degraded" // agent: not connected to libvirt
	HealthDown     = "down"     // appliance: defined but not running
)

// FlowList is the answer to GET /v1/flows. Note explains an empty list
// that is not simply "no traffic" (for example, no dataplane).
type FlowList struct {
	Flows []Flow `json:"flows"`
	Note  string `json:"note,omitempty"`
}

// Flow is one entry of the distribution manager's streams database.
type Flow struct {
	Guest     string   `json:"guest"`
	Protocol  string   `json:"protocol"`
	Src       string   `json:"src"` // address[:port] of the flow's initiator
	Dst       string   `json:"dst"`
	Chain     []string `json:"chain,omitempty"`     // appliances, in order; empty: delivered directly
	Instances []string `json:"instances,omitempty"` // the instance of each chain step this flow is pinned to
	Verdict   string   `json:"verdict"`
	Frames    uint64   `json:"frames"`
	Bytes     uint64   `json:"bytes"`
	// IdleSeconds is how long ago the flow last saw a frame.
	IdleSeconds float64 `json:"idle_seconds"`
}

// Event is one entry of the agent's event log (GET /v1/events): gates,
// appliance lifecycle, timeouts, configuration changes, and later drops and
// scaling. Kind is an open set: scripts should ignore kinds they do not
// know.
type Event struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Kind      string    `json:"kind"`
	Guest     string    `json:"guest,omitempty"`
	Appliance string    `json:"appliance,omitempty"`
	Message   string    `json:"message,omitempty"`
}

// EventList is the answer to GET /v1/events without follow.
type EventList struct {
	Events []Event `json:"events"`
}

// GuestList and ApplianceList wrap the lists in an object so that fields
// can be added next to them later without breaking decoders.
type GuestList struct {
	Guests []Guest `json:"guests"`
}

// ApplianceList is the answer to GET /v1/appliances.
type ApplianceList struct {
	Appliances []Appliance `json:"appliances"`
}

// How a policy was chosen for a domain.
const (
	MatchedBinding = "binding" // the domain's metadata binding names it
	MatchedGlob    = "glob"    // one of the policy's domain globs matches the name
	MatchedNone    = "none"    // no binding and no glob: the guest is unmanaged
)

// Explanation is the answer to GET /v1/explain/{domain}: which policy
// governs a domain, why, and which chain each kind of its traffic takes.
type Explanation struct {
	Domain string `json:"domain"`
	UUID   string `json:"uuid,omitempty"`
	// Appliance is set when the domain is an appliance instance vsagent
	// owns; policies never apply to those.
	Appliance string `json:"appliance,omitempty"`
	// Binding is the policy named by the domain's metadata binding, empty
	// when it has none. BindingError is set when the element is there but
	// unreadable, which gates the guest.
	Binding      string `json:"binding,omitempty"`
	BindingError string `json:"binding_error,omitempty"`
	Matched      string `json:"matched"` // MatchedBinding, MatchedGlob or MatchedNone
	Policy       string `json:"policy,omitempty"`
	Glob         string `json:"glob,omitempty"` // the glob that matched, for MatchedGlob
	Reason       string `json:"reason"`
	// Error is set when the guest asks for inspection that cannot be given
	// (its binding names an unknown policy): such a guest stays gated.
	Error string `json:"error,omitempty"`
	// Candidates lists every policy in matching order and whether its globs
	// match the name, so an operator sees why an expected policy lost.
	Candidates []Candidate `json:"candidates"`
	// Default is the chain for traffic no classifier matches.
	Default     []ChainStep  `json:"default_chain"`
	Classifiers []Classified `json:"classifiers"`
	Symmetric   bool         `json:"symmetric"`
	OnTimeout   string       `json:"on_timeout,omitempty"`
	// Agent is the agent's current view of the guest, if it has examined it.
	Agent *Guest `json:"agent,omitempty"`
}

// Candidate is one policy considered by glob matching.
type Candidate struct {
	Policy   string `json:"policy"`
	Position string `json:"position"` // file:line of its declaration
	Glob     string `json:"glob,omitempty"`
	Matches  bool   `json:"matches"`
	Chosen   bool   `json:"chosen"`
}

// ChainStep is one appliance of a chain and what the dataplane does when
// it has no healthy instance.
type ChainStep struct {
	Appliance string `json:"appliance"`
	Kind      string `json:"kind"`       // header or wire
	OnFailure string `json:"on_failure"` // block or bypass
}

// Classified is one classifier of the governing policy and its chain; the
// first classifier that matches a flow wins.
type Classified struct {
	Index     int         `json:"index"` // 1-based, in file order
	Direction string      `json:"direction"`
	Protocol  string      `json:"protocol"`
	Ports     []string    `json:"ports,omitempty"`
	CIDRs     []string    `json:"cidrs,omitempty"`
	Chain     []ChainStep `json:"chain"` // empty: this traffic is not inspected
}

// ErrorBody is the JSON body of every non-2xx answer.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the machine-readable code and the human message of an
// error answer.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes of ErrorDetail.
const (
	CodeNotFound    = "not_found"
	CodeBadRequest  = "bad_request"
	CodeForbidden   = "forbidden"
	CodeUnavailable = "unavailable"
	CodeInternal    = "internal"
)
