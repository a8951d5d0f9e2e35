package agent

import (
	"encoding/xml"
	"fmt"
	"strings"
	"time"
)

// gateRecord is written into a guest's metadata (StateNamespace) before the
// agent pauses it, so that an agent that restarts, or a different agent
// after a migration, knows that the pause is vsagent's and must be undone
// once the gate's reason is gone — and that a pause without a record is the
// operator's and must be left alone.
type gateRecord struct {
	XMLName xml.Name  `xml:"gate"`
	Since   time.Time `xml:"since,attr"`
	Policy  string    `xml:"policy,attr"`
	Waiting string    `xml:"waiting,attr,omitempty"`
	// Resume is false when the guest was already paused when it was gated
	// (started paused, or paused by its operator): the agent then only
	// holds it, and never resumes it on its own.
	Resume bool `xml:"resume,attr"`
}

func (g gateRecord) marshal() (string, error) {
	out, err := xml.Marshal(g)
	if err != nil {
		return "", fmt.Errorf("encode gate record: %w", err)
	}
	return string(out), nil
}

// parseGateRecord accepts the element as libvirt returns it, which carries
// the namespace declaration and may carry a prefix.
func parseGateRecord(s string) (gateRecord, bool, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return gateRecord{}, false, nil
	}
	var g gateRecord
	dec := xml.NewDecoder(strings.NewReader(s))
	if err := dec.Decode(&g); err != nil {
		return gateRecord{}, false, fmt.Errorf("decode gate record %q: %w", s, err)
	}
	if g.XMLName.Local != "gate" {
		return gateRecord{}, false, nil
	}
	return g, true, nil
}
