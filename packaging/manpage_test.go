package packaging

import (
	"bytes"
	"context"
	"os/exec"
	"testing"
	"time"
)

func TestRoffEscaping(t *testing.T) {
	tests := []struct{ in, text, line string }{
		{"plain words", "plain words", "plain words"},
		{"-c FILE --json", `\-c FILE \-\-json`, `\-c FILE \-\-json`},
		{`C:\dir`, `C:\edir`, `C:\edir`},
		{".SH not a request", ".SH not a request", `\&.SH not a request`},
		{"'quoted", "'quoted", `\&'quoted`},
		{"  .indented", "  .indented", "  .indented"},
	}
	for _, tt := range tests {
		if got := roffText(tt.in); got != tt.text {
			t.Errorf("roffText(%q) = %q, want %q", tt.in, got, tt.text)
		}
		if got := roffLine(tt.in); got != tt.line {
			t.Errorf("roffLine(%q) = %q, want %q", tt.in, got, tt.line)
		}
	}
}

// samplePage renders a page from fixed help texts, so the golden file
// pins the layout rather than the programs' current help.
func samplePage() []byte {
	page := manPages[0]
	helps := []helpText{
		{args: []string{"help"}, text: "usage: vsagent COMMAND [flags]\n\n.commands:\n  run [-c FILE]\t\trun the agent\n  path\\with\\backslashes\n"},
		{args: []string{"check-config", "-h"}, text: "usage: vsagent check-config [-c FILE]\n"},
	}
	return renderManPage(page, "1.2.3-rc.1", time.Date(2025, 5, 20, 12, 0, 0, 0, time.UTC), helps)
}

func TestManPageGolden(t *testing.T) {
	compareGolden(t, "vsagent.8.golden", samplePage())
}

// TestManPagesLint has groff check every page the way man(1) renders it:
// any warning means a page would show wrongly.
func TestManPagesLint(t *testing.T) {
	requireTool(t, "groff", "groff-base")
	pages := map[string][]byte{"sample": samplePage()}
	for _, p := range manPages {
		pages[p.name] = renderManPage(p, "1.0.0", time.Unix(0, 0), []helpText{{args: []string{"help"}, text: "usage: " + p.name + " [flags]\n"}})
	}
	for name, page := range pages {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, "groff", "-man", "-ww", "-z")
		cmd.Stdin = bytes.NewReader(page)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil || len(out) > 0 {
			t.Errorf("groff on the %s page: %v\n%s", name, err, out)
		}
	}
}
