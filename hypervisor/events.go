package hypervisor

import (
	"strconv"

	"libvirt.org/go/libvirt"
)

// EventKind is what happened to a domain, reduced from libvirt's
// (event, detail) pairs to the transitions the agent reacts to.
type EventKind int

const (
	EventDefined EventKind = iota + 1
	EventUndefined
	// EventStarted: booted, restored, from snapshot, woken up.
	EventStarted
	// EventMigratedIn: STARTED/MIGRATED and RESUMED/MIGRATED on the
	// destination host.
	EventMigratedIn
	EventSuspended
	EventResumed
	// EventStopped: any STOPPED except migrated, and CRASHED.
	EventStopped
	// EventMigratedOut: STOPPED/MIGRATED on the source host, i.e. the
	// migration has completed and the domain now runs elsewhere.
	EventMigratedOut
	EventMetadataChanged
	// EventResync is synthetic: emitted after every (re)connect and after
	// events had to be dropped. Consumers must re-list every domain.
	EventResync
)

var eventKindNames = [...]string{
	EventDefined:         "defined",
	EventUndefined:       "undefined",
	EventStarted:         "started",
	EventMigratedIn:      "migrated in",
	EventSuspended:       "suspended",
	EventResumed:         "resumed",
	EventStopped:         "stopped",
	EventMigratedOut:     "migrated out",
	EventMetadataChanged: "metadata changed",
	EventResync:          "resync",
}

func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return "event kind " + strconv.Itoa(int(k))
}

// Event is one domain event. The libvirt objects behind it are gone by the
// time a consumer sees it: it carries copies only.
type Event struct {
	UUID string
	Name string
	Kind EventKind
	// Detail is libvirt's detail in lower case ("booted", "destroyed",
	// "migrated", ...); for metadata changes, the namespace URI (or "title",
	// "description").
	Detail string
}

type lifecycleKey struct {
	event  libvirt.DomainEventType
	detail int
}

type lifecycleMapping struct {
	kind   EventKind
	detail string
}

// lifecycleTable is the whole mapping; docs/hypervisor.md shows it as a table.
// Source-side SUSPENDED/MIGRATED deliberately maps to EventSuspended: the
// migration can still fail and the source then resumes the guest, so a
// consumer must not tear the guest's chain down before STOPPED/MIGRATED.
var lifecycleTable = map[lifecycleKey]lifecycleMapping{
	{libvirt.DOMAIN_EVENT_DEFINED, int(libvirt.DOMAIN_EVENT_DEFINED_ADDED)}:         {EventDefined, "added"},
	{libvirt.DOMAIN_EVENT_DEFINED, int(libvirt.DOMAIN_EVENT_DEFINED_UPDATED)}:       {EventDefined, "updated"},
	{libvirt.DOMAIN_EVENT_DEFINED, int(libvirt.DOMAIN_EVENT_DEFINED_RENAMED)}:       {EventDefined, "renamed"},
	{libvirt.DOMAIN_EVENT_DEFINED, int(libvirt.DOMAIN_EVENT_DEFINED_FROM_SNAPSHOT)}: {EventDefined, "from-snapshot"},

	{libvirt.DOMAIN_EVENT_UNDEFINED, int(libvirt.DOMAIN_EVENT_UNDEFINED_REMOVED)}: {EventUndefined, "removed"},
	{libvirt.DOMAIN_EVENT_UNDEFINED, int(libvirt.DOMAIN_EVENT_UNDEFINED_RENAMED)}: {EventUndefined, "renamed"},

	{libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_BOOTED)}:        {EventStarted, "booted"},
	{libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_MIGRATED)}:      {EventMigratedIn, "migrated"},
	{libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_RESTORED)}:      {EventStarted, "restored"},
	{libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_FROM_SNAPSHOT)}: {EventStarted, "from-snapshot"},
	{libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_WAKEUP)}:        {EventStarted, "wakeup"},
	{libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_RECREATED)}:     {EventStarted, "recreated"},

	{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_PAUSED)}:          {EventSuspended, "paused"},
	{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_MIGRATED)}:        {EventSuspended, "migrated"},
	{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_IOERROR)}:         {EventSuspended, "ioerror"},
	{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_WATCHDOG)}:        {EventSuspended, "watchdog"},
	{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_RESTORED)}:        {EventSuspended, "restored"},
	{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT)}:   {EventSuspended, "from-snapshot"},
	{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_API_ERROR)}:       {EventSuspended, "api-error"},
	{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_POSTCOPY)}:        {EventSuspended, "postcopy"},
	{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED)}: {EventSuspended, "postcopy-failed"},
	{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_GUEST_SHUTDOWN)}:  {EventSuspended, "guest-shutdown"},

	{libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_UNPAUSED)}:        {EventResumed, "unpaused"},
	{libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_MIGRATED)}:        {EventMigratedIn, "migrated"},
	{libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT)}:   {EventResumed, "from-snapshot"},
	{libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY)}:        {EventResumed, "postcopy"},
	{libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED)}: {EventResumed, "postcopy-failed"},

	{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_SHUTDOWN)}:      {EventStopped, "shutdown"},
	{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_DESTROYED)}:     {EventStopped, "destroyed"},
	{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_CRASHED)}:       {EventStopped, "crashed"},
	{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_MIGRATED)}:      {EventMigratedOut, "migrated"},
	{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_SAVED)}:         {EventStopped, "saved"},
	{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_FAILED)}:        {EventStopped, "failed"},
	{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT)}: {EventStopped, "from-snapshot"},
	{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_RECREATED)}:     {EventStopped, "recreated"},

	{libvirt.DOMAIN_EVENT_CRASHED, int(libvirt.DOMAIN_EVENT_CRASHED_PANICKED)}:    {EventStopped, "crashed-panicked"},
	{libvirt.DOMAIN_EVENT_CRASHED, int(libvirt.DOMAIN_EVENT_CRASHED_CRASHLOADED)}: {EventStopped, "crashed-crashloaded"},

	{libvirt.DOMAIN_EVENT_PMSUSPENDED, int(libvirt.DOMAIN_EVENT_PMSUSPENDED_MEMORY)}: {EventSuspended, "pmsuspended-memory"},
	{libvirt.DOMAIN_EVENT_PMSUSPENDED, int(libvirt.DOMAIN_EVENT_PMSUSPENDED_DISK)}:   {EventSuspended, "pmsuspended-disk"},
}

// kindOfUnknownDetail covers details a newer libvirt may add: the event type
// alone still says which way the domain went.
var kindOfUnknownDetail = map[libvirt.DomainEventType]EventKind{
	libvirt.DOMAIN_EVENT_DEFINED:     EventDefined,
	libvirt.DOMAIN_EVENT_UNDEFINED:   EventUndefined,
	libvirt.DOMAIN_EVENT_STARTED:     EventStarted,
	libvirt.DOMAIN_EVENT_SUSPENDED:   EventSuspended,
	libvirt.DOMAIN_EVENT_RESUMED:     EventResumed,
	libvirt.DOMAIN_EVENT_STOPPED:     EventStopped,
	libvirt.DOMAIN_EVENT_CRASHED:     EventStopped,
	libvirt.DOMAIN_EVENT_PMSUSPENDED: EventSuspended,
}

// lifecycleKind maps a libvirt lifecycle event. ok is false for events the
// agent has no use for: SHUTDOWN (a shutdown in progress; the STOPPED that
// follows is what counts) and event types this libvirt version did not have.
func lifecycleKind(event libvirt.DomainEventType, detail int) (kind EventKind, detailName string, ok bool) {
	if m, found := lifecycleTable[lifecycleKey{event, detail}]; found {
		return m.kind, m.detail, true
	}
	if kind, found := kindOfUnknownDetail[event]; found {
		return kind, "detail-" + strconv.Itoa(detail), true
	}
	return 0, "", false
}

// metadataDetail names what changed in a metadata-change event.
func metadataDetail(typ libvirt.DomainMetadataType, nsURI string) string {
	switch typ {
	case libvirt.DOMAIN_METADATA_TITLE:
		return "title"
	case libvirt.DOMAIN_METADATA_DESCRIPTION:
		return "description"
	}
	return nsURI
}
