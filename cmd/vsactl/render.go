package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vsagent/vsagent/internal/api"
)

// none fills an empty table cell, so that columns stay aligned for awk.
const none = "-"

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

func row(tw io.Writer, cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = none
		}
	}
	fmt.Fprintln(tw, strings.Join(cells, "\t"))
}

func (c *cli) renderStatus(st api.Status) error {
	tw := newTable(c.stdout)
	ready := "first reconcile pass in progress"
	if st.Ready {
		ready = "ready"
	}
	fmt.Fprintf(tw, "agent:\t%s (%s), version %s, API %s, up %s\n",
		st.Health, ready, st.AgentVersion, st.APIVersion, age(c.now(), st.StartedAt))
	lv := "connected to " + st.Libvirt.URI
	if !st.Libvirt.Connected {
		lv = "NOT connected to " + st.Libvirt.URI + " (reconnecting)"
	}
	fmt.Fprintf(tw, "libvirt:\t%s, %s, %s\n", lv,
		plural(int(st.Libvirt.Reconnects), "reconnect"), plural(int(st.Libvirt.DroppedEvents), "dropped event"))
	n := st.Counts
	fmt.Fprintf(tw, "guests:\t%d (%d inspected, %d gated, %d unmanaged; %d with errors)\n",
		n.Guests, n.GuestsInspected, n.GuestsGated, n.GuestsUnmanaged, n.GuestsWithErrors)
	fmt.Fprintf(tw, "appliances:\t%s (%d running)\n", plural(n.Appliances, "instance"), n.AppliancesRunning)
	dp := "not running"
	if st.Dataplane.Running {
		dp = "running, " + plural(st.Dataplane.Flows, "flow")
	}
	fmt.Fprintf(tw, "dataplane:\t%s\n", dp)
	fmt.Fprintf(tw, "config:\t%s\n", st.Config.Summary)
	for _, f := range st.Config.Files {
		fmt.Fprintf(tw, "\t  %s\n", f)
	}
	return tw.Flush()
}

func (c *cli) renderGuests(gs []api.Guest) error {
	if len(gs) == 0 {
		fmt.Fprintln(c.stdout, "no guests")
		return nil
	}
	tw := newTable(c.stdout)
	row(tw, "NAME", "STATE", "POLICY", "CHAIN", "FOR", "WHY")
	for _, g := range gs {
		why := g.Reason
		if g.LastError != "" {
			why = "error: " + g.LastError
		}
		row(tw, g.Name, g.State, g.Policy, chain(g.Chain), age(c.now(), g.Since), why)
	}
	return tw.Flush()
}

func (c *cli) renderAppliances(as []api.Appliance) error {
	if len(as) == 0 {
		fmt.Fprintln(c.stdout, "no appliance instances")
		return nil
	}
	tw := newTable(c.stdout)
	row(tw, "NAME", "APPLIANCE", "INDEX", "STATE", "HEALTH", "CPU", "GUESTS", "MACS")
	for _, a := range as {
		cpu := ""
		if a.CPUUtilisation != nil {
			cpu = strconv.FormatFloat(*a.CPUUtilisation*100, 'f', 1, 64) + "%"
		}
		row(tw, a.Name, a.Appliance, strconv.Itoa(a.Index), a.State, a.Health, cpu,
			strconv.Itoa(a.Guests), strings.Join(a.MACs, ","))
	}
	return tw.Flush()
}

func (c *cli) renderFlows(fl api.FlowList) error {
	if len(fl.Flows) == 0 {
		if fl.Note != "" {
			fmt.Fprintln(c.stdout, "no flows:", fl.Note)
		} else {
			fmt.Fprintln(c.stdout, "no flows")
		}
		return nil
	}
	tw := newTable(c.stdout)
	row(tw, "GUEST", "PROTO", "SOURCE", "DESTINATION", "CHAIN", "INSTANCES", "VERDICT", "FRAMES", "BYTES", "IDLE")
	for _, f := range fl.Flows {
		idle := time.Duration(f.IdleSeconds * float64(time.Second))
		row(tw, f.Guest, f.Protocol, f.Src, f.Dst, chain(f.Chain), strings.Join(f.Instances, ","), f.Verdict,
			strconv.FormatUint(f.Frames, 10), strconv.FormatUint(f.Bytes, 10), shortDuration(idle))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if fl.Note != "" {
		fmt.Fprintln(c.stdout, fl.Note)
	}
	return nil
}

// Events are printed with fixed widths rather than a tabwriter, because
// --follow prints them one at a time and a column must not move.
const eventFormat = "%-6s %-19s %-18s %-20s %s\n"

func (c *cli) renderEvents(evs []api.Event) error {
	if len(evs) == 0 {
		fmt.Fprintln(c.stdout, "no events")
		return nil
	}
	c.printEventHeader()
	for _, e := range evs {
		if err := c.printEventRow(e); err != nil {
			return err
		}
	}
	return nil
}

func (c *cli) printEventHeader() {
	fmt.Fprintf(c.stdout, eventFormat, "SEQ", "TIME", "KIND", "SUBJECT", "MESSAGE")
}

func (c *cli) printEventRow(e api.Event) error {
	subject := e.Guest
	if e.Appliance != "" {
		if subject != "" {
			subject += " "
		}
		subject += e.Appliance
	}
	if subject == "" {
		subject = none
	}
	msg := e.Message
	if msg == "" {
		msg = none
	}
	_, err := fmt.Fprintf(c.stdout, eventFormat, strconv.FormatUint(e.Seq, 10),
		e.Time.In(c.loc).Format(time.DateTime), e.Kind, subject, msg)
	return err
}

func (c *cli) printEventLine(e api.Event) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = c.stdout.Write(append(b, '\n'))
	return err
}

func (c *cli) renderExplanation(e api.Explanation) error {
	tw := newTable(c.stdout)
	id := e.Domain
	if e.UUID != "" {
		id += " (" + e.UUID + ")"
	}
	fmt.Fprintf(tw, "domain:\t%s\n", id)
	if e.Appliance != "" {
		fmt.Fprintf(tw, "appliance:\t%s\n", e.Appliance)
		fmt.Fprintf(tw, "why:\t%s\n", e.Reason)
		return tw.Flush()
	}
	binding := "none"
	switch {
	case e.BindingError != "":
		binding = "unreadable: " + e.BindingError
	case e.Binding != "":
		binding = fmt.Sprintf("policy %q", e.Binding)
	}
	fmt.Fprintf(tw, "binding:\t%s\n", binding)
	policy := "none"
	switch {
	case e.Policy != "" && e.Matched == api.MatchedGlob:
		policy = fmt.Sprintf("%s (by glob %q)", e.Policy, e.Glob)
	case e.Policy != "":
		policy = e.Policy + " (by metadata binding)"
	}
	fmt.Fprintf(tw, "policy:\t%s\n", policy)
	fmt.Fprintf(tw, "why:\t%s\n", e.Reason)
	if e.Error != "" {
		fmt.Fprintf(tw, "PROBLEM:\t%s\n", e.Error)
	}
	if e.Agent != nil {
		now := fmt.Sprintf("%s for %s", e.Agent.State, age(c.now(), e.Agent.Since))
		if e.Agent.LastError != "" {
			now += "; last error: " + e.Agent.LastError
		}
		fmt.Fprintf(tw, "agent sees:\t%s\n", now)
	} else {
		fmt.Fprintf(tw, "agent sees:\tnot examined yet\n")
	}
	if e.Policy != "" {
		fmt.Fprintf(tw, "default chain:\t%s\n", steps(e.Default))
		replies := "take their own classification (not symmetric)"
		if e.Symmetric {
			replies = "take the reverse chain (symmetric)"
		}
		fmt.Fprintf(tw, "replies:\t%s\n", replies)
		fmt.Fprintf(tw, "on timeout:\t%s\n", e.OnTimeout)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if e.Policy != "" {
		fmt.Fprintln(c.stdout)
		if len(e.Classifiers) == 0 {
			fmt.Fprintln(c.stdout, "classifiers: none; all traffic takes the default chain")
		} else {
			fmt.Fprintln(c.stdout, "classifiers (the first that matches a flow wins; others take the default chain):")
			tw = newTable(c.stdout)
			row(tw, "  #", "DIRECTION", "PROTOCOL", "PORTS", "CIDRS", "CHAIN")
			for _, cl := range e.Classifiers {
				row(tw, "  "+strconv.Itoa(cl.Index), cl.Direction, cl.Protocol, strings.Join(cl.Ports, ","), strings.Join(cl.CIDRs, ","), steps(cl.Chain))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
	}
	fmt.Fprintln(c.stdout)
	if len(e.Candidates) == 0 {
		fmt.Fprintln(c.stdout, "policies: none configured")
		return nil
	}
	fmt.Fprintln(c.stdout, "policies, in matching order:")
	tw = newTable(c.stdout)
	row(tw, "  POLICY", "DECLARED", "GLOB", "RESULT")
	for _, cand := range e.Candidates {
		result := "no glob matches"
		switch {
		case cand.Chosen:
			result = "chosen"
		case cand.Matches && e.Matched == api.MatchedBinding:
			result = "matches, but the binding wins"
		case cand.Matches:
			result = "matches, but an earlier policy wins"
		}
		row(tw, "  "+cand.Policy, cand.Position, cand.Glob, result)
	}
	return tw.Flush()
}

func chain(apps []string) string { return strings.Join(apps, " > ") }

func steps(s []api.ChainStep) string {
	if len(s) == 0 {
		return "(not inspected)"
	}
	parts := make([]string, len(s))
	for i, st := range s {
		parts[i] = fmt.Sprintf("%s [%s, on failure %s]", st.Appliance, st.Kind, st.OnFailure)
	}
	return strings.Join(parts, " > ")
}

func plural(n int, one string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + one + "s"
}

// age is how long ago t was, in the coarse form operators read at a glance.
func age(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return shortDuration(now.Sub(t))
}

func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%02dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
}
