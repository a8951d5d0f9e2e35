package packaging

import (
	"bytes"
	"fmt"
	"strings"
	"time"
)

// manPage describes one generated man page. Its body is the program's own
// help output, so the page cannot drift from the program.
type manPage struct {
	name    string
	section int
	summary string
	// description is the page's prose, one paragraph per entry.
	description []string
	// helps are the argument lists whose output the page shows, in order;
	// the first is the synopsis, the others get a subsection each.
	helps   [][]string
	files   [][2]string // path and what it is
	seeAlso []string    // "name(section)"
}

type helpText struct {
	args []string
	text string
}

var manPages = []manPage{
	{
		name:    "vsagent",
		section: 8,
		summary: "keep libvirt guests behind their virtual security appliances",
		description: []string{
			"vsagent watches libvirt's domains. A guest whose policy requires inspection is kept paused until the appliances of its chain are defined from templates and running; its interfaces are then diverted to the distribution manager, which source-routes every frame through those appliances.",
			"Under systemd the agent runs as vsagent.service. As installed, the configuration defines no appliances and no policies, so the agent manages no guest until they are added.",
		},
		helps: [][]string{{"help"}, {"check-config", "-h"}, {"image", "help"}},
		files: [][2]string{
			{"/etc/vsagent/vsagent.toml", "the configuration"},
			{"/etc/vsagent/conf.d/*.toml", "more appliances and policies, read in lexical order"},
			{"/etc/vsagent/templates/", "libvirt domain XML of the appliances"},
			{"/run/vsagent/vsagent.sock", "the control socket vsactl talks to"},
			{"/var/lib/vsagent/", "state that cannot be rebuilt from libvirt"},
			{"/usr/share/doc/vsagent/", "documentation and a complete example configuration"},
		},
		seeAlso: []string{"vsactl(8)", "vsagent-hook(8)", "vsafilter(8)", "systemctl(1)", "virsh(1)"},
	},
	{
		name:    "vsactl",
		section: 8,
		summary: "query a running vsagent through its control socket",
		description: []string{
			"vsactl shows what the agent does: its health, the guests it gates or inspects and why, the appliance instances, the dataplane's flows and the agent's events. Only root may use the control socket.",
		},
		helps: [][]string{{"help"}},
		files: [][2]string{
			{"/run/vsagent/vsagent.sock", "the default control socket (--socket, $VSACTL_SOCKET)"},
		},
		seeAlso: []string{"vsagent(8)"},
	},
	{
		name:    "vsagent-hook",
		section: 8,
		summary: "libvirt's qemu hook for vsagent",
		description: []string{
			"libvirtd runs the hook, as /etc/libvirt/hooks/qemu.d/vsagent, before it prepares, starts, migrates in or restores a guest, and waits for it. The hook never calls libvirt: it asks the running agent over its root-only hook socket whether the guest may proceed, so a guest that needs inspection is held before its QEMU runs. When the agent does not answer in time, [agent] hook_failure decides for guests that need inspection; guests without a policy always proceed.",
			"libvirtd looks for hooks when it starts: restart it once after installing vsagent (running guests are not affected).",
		},
		helps: [][]string{{}},
		files: [][2]string{
			{"/etc/libvirt/hooks/qemu.d/vsagent", "where libvirtd finds the hook"},
			{"/etc/vsagent/vsagent.toml", "read for the socket path and hook_failure ($VSAGENT_CONFIG overrides)"},
		},
		seeAlso: []string{"vsagent(8)", "libvirtd(8)"},
	},
	{
		name:    "vsafilter",
		section: 8,
		summary: "the reference security appliance filter",
		description: []string{
			"vsafilter is the packet filter that runs inside vsagent's appliance image: it speaks the MAC source-route header, applies its rules and returns or drops each frame. It is installed on the host so that `vsagent image build` can put it into the image.",
		},
		helps:   [][]string{{"-h"}},
		seeAlso: []string{"vsagent(8)"},
	},
}

// renderManPage writes a man(7) page. Help texts go in no-fill blocks,
// escaped so that roff shows them literally.
func renderManPage(p manPage, version string, date time.Time, helps []helpText) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, ".TH %s %d %s \"vsagent %s\" \"vsagent manual\"\n", strings.ToUpper(p.name), p.section, date.UTC().Format("2006-01-02"), version)
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", p.name, roffText(p.summary))
	for i, h := range helps {
		if i == 0 {
			b.WriteString(".SH SYNOPSIS\n")
		} else {
			fmt.Fprintf(&b, ".SS %s\n", roffText(p.name+" "+strings.Join(h.args, " ")))
		}
		b.WriteString(".nf\n")
		for _, line := range strings.Split(strings.TrimRight(h.text, "\n"), "\n") {
			b.WriteString(roffLine(strings.ReplaceAll(line, "\t", "        ")))
			b.WriteByte('\n')
		}
		b.WriteString(".fi\n")
		if i == 0 && len(p.description) > 0 {
			b.WriteString(".SH DESCRIPTION\n")
			for j, para := range p.description {
				if j > 0 {
					b.WriteString(".PP\n")
				}
				b.WriteString(roffLine(para))
				b.WriteByte('\n')
			}
		}
	}
	if len(p.files) > 0 {
		b.WriteString(".SH FILES\n")
		for _, f := range p.files {
			fmt.Fprintf(&b, ".TP\n.I %s\n%s\n", roffText(f[0]), roffLine(f[1]))
		}
	}
	if len(p.seeAlso) > 0 {
		b.WriteString(".SH SEE ALSO\n")
		for i, ref := range p.seeAlso {
			name, sec, _ := strings.Cut(strings.TrimSuffix(ref, ")"), "(")
			sep := ","
			if i == len(p.seeAlso)-1 {
				sep = ""
			}
			fmt.Fprintf(&b, ".BR %s (%s)%s\n", roffText(name), sec, sep)
		}
	}
	return b.Bytes()
}

// roffText escapes text so roff prints it as is: a backslash is roff's
// escape character, and "-" must be \- to stay a copyable minus sign
// rather than a hyphen.
func roffText(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	return strings.ReplaceAll(s, "-", `\-`)
}

// roffLine escapes a whole line: one starting with "." or "'" would be read
// as a request, which \& (a zero-width character) prevents.
func roffLine(s string) string {
	s = roffText(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}
