package hypervisor

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"libvirt.org/go/libvirt"
)

// lifecycleCases is the mapping written out independently of the code, with
// libvirt's names; docs/hypervisor.md must show every row.
var lifecycleCases = []struct {
	libvirtName string
	event       libvirt.DomainEventType
	detail      int
	kind        EventKind
	ourDetail   string
}{
	{"DEFINED/ADDED", libvirt.DOMAIN_EVENT_DEFINED, int(libvirt.DOMAIN_EVENT_DEFINED_ADDED), EventDefined, "added"},
	{"DEFINED/UPDATED", libvirt.DOMAIN_EVENT_DEFINED, int(libvirt.DOMAIN_EVENT_DEFINED_UPDATED), EventDefined, "updated"},
	{"DEFINED/RENAMED", libvirt.DOMAIN_EVENT_DEFINED, int(libvirt.DOMAIN_EVENT_DEFINED_RENAMED), EventDefined, "renamed"},
	{"DEFINED/FROM_SNAPSHOT", libvirt.DOMAIN_EVENT_DEFINED, int(libvirt.DOMAIN_EVENT_DEFINED_FROM_SNAPSHOT), EventDefined, "from-snapshot"},
	{"UNDEFINED/REMOVED", libvirt.DOMAIN_EVENT_UNDEFINED, int(libvirt.DOMAIN_EVENT_UNDEFINED_REMOVED), EventUndefined, "removed"},
	{"UNDEFINED/RENAMED", libvirt.DOMAIN_EVENT_UNDEFINED, int(libvirt.DOMAIN_EVENT_UNDEFINED_RENAMED), EventUndefined, "renamed"},
	{"STARTED/BOOTED", libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_BOOTED), EventStarted, "booted"},
	{"STARTED/MIGRATED", libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_MIGRATED), EventMigratedIn, "migrated"},
	{"STARTED/RESTORED", libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_RESTORED), EventStarted, "restored"},
	{"STARTED/FROM_SNAPSHOT", libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_FROM_SNAPSHOT), EventStarted, "from-snapshot"},
	{"STARTED/WAKEUP", libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_WAKEUP), EventStarted, "wakeup"},
	{"STARTED/RECREATED", libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_RECREATED), EventStarted, "recreated"},
	{"SUSPENDED/PAUSED", libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_PAUSED), EventSuspended, "paused"},
	{"SUSPENDED/MIGRATED", libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_MIGRATED), EventSuspended, "migrated"},
	{"SUSPENDED/IOERROR", libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_IOERROR), EventSuspended, "ioerror"},
	{"SUSPENDED/WATCHDOG", libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_WATCHDOG), EventSuspended, "watchdog"},
	{"SUSPENDED/RESTORED", libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_RESTORED), EventSuspended, "restored"},
	{"SUSPENDED/FROM_SNAPSHOT", libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT), EventSuspended, "from-snapshot"},
	{"SUSPENDED/API_ERROR", libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_API_ERROR), EventSuspended, "api-error"},
	{"SUSPENDED/POSTCOPY", libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_POSTCOPY), EventSuspended, "postcopy"},
	{"SUSPENDED/POSTCOPY_FAILED", libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED), EventSuspended, "postcopy-failed"},
	{"SUSPENDED/GUEST_SHUTDOWN", libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_GUEST_SHUTDOWN), EventSuspended, "guest-shutdown"},
	{"RESUMED/UNPAUSED", libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_UNPAUSED), EventResumed, "unpaused"},
	{"RESUMED/MIGRATED", libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_MIGRATED), EventMigratedIn, "migrated"},
	{"RESUMED/FROM_SNAPSHOT", libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT), EventResumed, "from-snapshot"},
	{"RESUMED/POSTCOPY", libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY), EventResumed, "postcopy"},
	{"RESUMED/POSTCOPY_FAILED", libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED), EventResumed, "postcopy-failed"},
	{"STOPPED/SHUTDOWN", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_SHUTDOWN), EventStopped, "shutdown"},
	{"STOPPED/DESTROYED", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_DESTROYED), EventStopped, "destroyed"},
	{"STOPPED/CRASHED", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_CRASHED), EventStopped, "crashed"},
	{"STOPPED/MIGRATED", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_MIGRATED), EventMigratedOut, "migrated"},
	{"STOPPED/SAVED", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_SAVED), EventStopped, "saved"},
	{"STOPPED/FAILED", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_FAILED), EventStopped, "failed"},
	{"STOPPED/FROM_SNAPSHOT", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT), EventStopped, "from-snapshot"},
	{"STOPPED/RECREATED", libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_RECREATED), EventStopped, "recreated"},
	{"CRASHED/PANICKED", libvirt.DOMAIN_EVENT_CRASHED, int(libvirt.DOMAIN_EVENT_CRASHED_PANICKED), EventStopped, "crashed-panicked"},
	{"CRASHED/CRASHLOADED", libvirt.DOMAIN_EVENT_CRASHED, int(libvirt.DOMAIN_EVENT_CRASHED_CRASHLOADED), EventStopped, "crashed-crashloaded"},
	{"PMSUSPENDED/MEMORY", libvirt.DOMAIN_EVENT_PMSUSPENDED, int(libvirt.DOMAIN_EVENT_PMSUSPENDED_MEMORY), EventSuspended, "pmsuspended-memory"},
	{"PMSUSPENDED/DISK", libvirt.DOMAIN_EVENT_PMSUSPENDED, int(libvirt.DOMAIN_EVENT_PMSUSPENDED_DISK), EventSuspended, "pmsuspended-disk"},
}

func TestLifecycleMapping(t *testing.T) {
	for _, tt := range lifecycleCases {
		kind, detail, ok := lifecycleKind(tt.event, tt.detail)
		if !ok || kind != tt.kind || detail != tt.ourDetail {
			t.Errorf("%s -> (%v, %q, %v), want (%v, %q)", tt.libvirtName, kind, detail, ok, tt.kind, tt.ourDetail)
		}
	}
	if len(lifecycleTable) != len(lifecycleCases) {
		t.Errorf("code maps %d pairs, the test knows %d", len(lifecycleTable), len(lifecycleCases))
	}
}

func TestLifecycleMappingEdges(t *testing.T) {
	tests := []struct {
		name       string
		event      libvirt.DomainEventType
		detail     int
		wantOK     bool
		wantKind   EventKind
		wantDetail string
	}{
		{"shutdown in progress is ignored", libvirt.DOMAIN_EVENT_SHUTDOWN, int(libvirt.DOMAIN_EVENT_SHUTDOWN_HOST), false, 0, ""},
		{"shutdown finished is ignored", libvirt.DOMAIN_EVENT_SHUTDOWN, int(libvirt.DOMAIN_EVENT_SHUTDOWN_FINISHED), false, 0, ""},
		{"unknown event type", libvirt.DomainEventType(999), 0, false, 0, ""},
		{"unknown started detail still starts", libvirt.DOMAIN_EVENT_STARTED, 99, true, EventStarted, "detail-99"},
		{"unknown stopped detail still stops", libvirt.DOMAIN_EVENT_STOPPED, 99, true, EventStopped, "detail-99"},
		{"unknown crash detail stops", libvirt.DOMAIN_EVENT_CRASHED, -1, true, EventStopped, "detail--1"},
	}
	for _, tt := range tests {
		kind, detail, ok := lifecycleKind(tt.event, tt.detail)
		if ok != tt.wantOK || kind != tt.wantKind || detail != tt.wantDetail {
			t.Errorf("%s: (%v, %q, %v), want (%v, %q, %v)", tt.name, kind, detail, ok, tt.wantKind, tt.wantDetail, tt.wantOK)
		}
	}
}

func TestKindAndStateNames(t *testing.T) {
	for k := EventDefined; k <= EventResync; k++ {
		if s := k.String(); s == "" || strings.HasPrefix(s, "event kind") || s != strings.ToLower(s) {
			t.Errorf("EventKind(%d).String() = %q", k, s)
		}
	}
	if s := EventKind(0).String(); s != "event kind 0" {
		t.Errorf("EventKind(0) = %q", s)
	}
	for s := StateOther; s <= StatePMSuspended; s++ {
		if s.String() == "" || strings.HasPrefix(s.String(), "state ") {
			t.Errorf("State(%d).String() = %q", s, s.String())
		}
	}
}

// The documentation's mapping table is the contract the agent is written
// against; it must not drift from the code.
func TestDocsShowEveryMapping(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "hypervisor.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range lifecycleCases {
		row := regexp.MustCompile(`(?m)^\|\s*` + regexp.QuoteMeta(tt.libvirtName) + `\s*\|\s*` +
			regexp.QuoteMeta(tt.kind.String()) + `\s*\|\s*` + regexp.QuoteMeta(tt.ourDetail) + `\s*\|`)
		if !row.Match(doc) {
			t.Errorf("docs/hypervisor.md lacks the row | %s | %s | %s |", tt.libvirtName, tt.kind, tt.ourDetail)
		}
	}
}
