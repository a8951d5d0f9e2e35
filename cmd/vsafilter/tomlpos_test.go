package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/google/go-cmp/cmp"
)

func TestKeyLines(t *testing.T) {
	doc := `# comment [not a table]
top = 1
[interface]
name = "eth0" # trailing
"quoted key" = 'x'
a.b = 2

[[rule]]
action = "deny"
src = [
  "10.0.0.0/8", # ] tricky
  "fd00::/8",
]
[[rule]]
action = """
multi
line"""
dport = 53
[rule.extra]
k = 1
[[rule.sub]]
x = 1
[[rule.sub]]
x = 2
[filter]
inline = { a = 1, b = [1, 2] }
last = true
`
	want := map[string]int{
		"top": 2, "interface": 3, "interface.name": 4, "interface.quoted key": 5, "interface.a": 6, "interface.a.b": 6,
		"rule": 8, "rule[0]": 8, "rule[0].action": 9, "rule[0].src": 10,
		"rule[1]": 14, "rule[1].action": 15, "rule[1].dport": 18,
		"rule[1].extra": 19, "rule[1].extra.k": 20,
		"rule[1].sub": 21, "rule[1].sub[0]": 21, "rule[1].sub[0].x": 22, "rule[1].sub[1]": 23, "rule[1].sub[1].x": 24,
		"filter": 25, "filter.inline": 26, "filter.last": 27,
	}
	if _, err := toml.Decode(doc, new(map[string]any)); err != nil {
		t.Fatalf("test document is not valid TOML: %v", err)
	}
	if diff := cmp.Diff(want, keyLines([]byte(doc))); diff != "" {
		t.Errorf("key lines (-want +got):\n%s", diff)
	}
	for path, line := range map[string]int{"filter.inline.a": 26, "rule[1].sub[1].x.y": 24, "nothing.here": 0} {
		if got := lineOf(keyLines([]byte(doc)), path); got != line {
			t.Errorf("lineOf(%q) = %d, want %d", path, got, line)
		}
	}
}

var indexRE = regexp.MustCompile(`\[\d+\]`)

// FuzzKeyLines: on any document the decoder accepts, the scanner must not
// panic, must give lines inside the document, and must find every key the
// decoder saw (outside inline tables, which it does not enter).
func FuzzKeyLines(f *testing.F) {
	f.Add("[interface]\nname = \"eth0\"\n[[rule]]\naction = \"deny\"\n")
	f.Add("a = \"\"\"\nx\"\"\"\nb = '''y\n'''\n[t]\nc = [1,\n2]\n")
	f.Add("[a.b]\nc.d = 1\n[[x]]\n[[x]]\ny = 'q'\n")
	f.Add(`"k.e.y" = 1`)
	f.Fuzz(func(t *testing.T, doc string) {
		md, err := toml.Decode(doc, new(map[string]any))
		lines := keyLines([]byte(doc))
		if err != nil {
			return
		}
		nlines := strings.Count(doc, "\n") + 1
		seen := make(map[string]bool)
		for path, l := range lines {
			if l < 1 || l > nlines {
				t.Fatalf("%q at line %d of %d", path, l, nlines)
			}
			seen[indexRE.ReplaceAllString(path, "")] = true
		}
		if strings.ContainsAny(doc, "{.\"'\\") {
			// Inline tables are not entered; quoted and dotted names
			// make plain joined paths ambiguous. Only the bounds hold.
			return
		}
		for _, k := range md.Keys() {
			if p := strings.Join(k, "."); !seen[p] {
				t.Fatalf("key %q not found; scanner saw %v", p, lines)
			}
		}
	})
}
