package config

import (
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/google/go-cmp/cmp"
)

func TestKeyLines(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want map[string]int
	}{
		{
			name: "tables and arrays of tables",
			doc: `top = 1
[agent]
log_level = "info"   # trailing comment

[[policy]]
name = "a"
[policy.match]
domains = ["x"]
[[policy.classifier]]
chain = []
[[policy.classifier]]
chain = []
[[policy]]
name = "b"
[[policy.classifier]]
chain = []
`,
			want: map[string]int{
				"top": 1, "agent": 2, "agent.log_level": 3,
				"policy": 5, "policy[0]": 5, "policy[0].name": 6,
				"policy[0].match": 7, "policy[0].match.domains": 8, "policy[0].match.domains[0]": 8,
				"policy[0].classifier": 9, "policy[0].classifier[0]": 9, "policy[0].classifier[0].chain": 10,
				"policy[0].classifier[1]": 11, "policy[0].classifier[1].chain": 12,
				"policy[1]": 13, "policy[1].name": 14,
				"policy[1].classifier": 15, "policy[1].classifier[0]": 15, "policy[1].classifier[0].chain": 16,
			},
		},
		{
			name: "multi-line strings hide lookalike keys and headers",
			doc: `a = """
[agent]
b = 1
"""
c = '''
d = 2 '''
e = "\"[x]\" # not a comment"
f = 'C:\path\'
g = """ends with quotes"""""
h = 3
`,
			want: map[string]int{"a": 1, "c": 5, "e": 7, "f": 8, "g": 9, "h": 10},
		},
		{
			name: "arrays spanning lines, with comments and nesting",
			doc: `ports = [
  "80",   # web
  # a comment line with ] and [
  "443", [1, 2],
]
next = 1
`,
			want: map[string]int{
				"ports": 1, "ports[0]": 2, "ports[1]": 4, "ports[2]": 4, "ports[2][0]": 4, "ports[2][1]": 4,
				"next": 6,
			},
		},
		{
			name: "dotted and quoted keys, inline tables",
			doc: `[agent]
a.b.c = 1
"quoted key" = 2
'lit.eral' = 3
"esc\u0041" = 4
x = { y = 1, z = { w = 2 } }
list = [
  { k = 1 },
  { k = 2 },
]
[ "sp ace" . inner ]
v = 1
`,
			want: map[string]int{
				"agent": 1, "agent.a": 2, "agent.a.b": 2, "agent.a.b.c": 2,
				`agent."quoted key"`: 3, `agent."lit.eral"`: 4, "agent.escA": 5,
				"agent.x": 6, "agent.x.y": 6, "agent.x.z": 6, "agent.x.z.w": 6,
				"agent.list": 7, "agent.list[0]": 8, "agent.list[0].k": 8, "agent.list[1]": 9, "agent.list[1].k": 9,
				`"sp ace"`: 11, `"sp ace".inner`: 11, `"sp ace".inner.v`: 12,
			},
		},
		{
			name: "CRLF line endings and dates with spaces",
			doc:  "a = 1\r\nwhen = 1979-05-27 07:32:00Z\r\n[t]\r\nb = 2\r\n",
			want: map[string]int{"a": 1, "when": 2, "t": 3, "t.b": 4},
		},
		{
			name: "values nested deeper than maxInlineDepth are skipped whole",
			doc: "deep = " + strings.Repeat("[", maxInlineDepth+2) + "\"]\", '}', # ]\n" +
				strings.Repeat("]", maxInlineDepth+2) + "\nafter = 1\n",
			want: func() map[string]int {
				m := map[string]int{"deep": 1, "after": 3}
				p := "deep"
				for range maxInlineDepth {
					p = indexKey(p, 0)
					m[p] = 1
				}
				return m
			}(),
		},
		{
			name: "multi-line inline table",
			doc:  "t = {\n  a = 1,\n  b = [\n 2 ],\n}\nz = 0\n",
			want: map[string]int{"t": 1, "t.a": 2, "t.b": 3, "t.b[0]": 4, "z": 6},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m map[string]any
			if _, err := toml.Decode(tt.doc, &m); err != nil {
				t.Fatalf("test document is not valid TOML: %v", err)
			}
			if diff := cmp.Diff(tt.want, keyLines(tt.doc)); diff != "" {
				t.Errorf("keyLines (-want +got):\n%s", diff)
			}
		})
	}
}

// treePaths lists the path of every key, table and array element of a
// decoded document, formatted as keyLines formats them.
func treePaths(prefix string, v any, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			p := joinKey(prefix, k)
			*out = append(*out, p)
			treePaths(p, e, out)
		}
	case []map[string]any:
		for i, e := range v {
			p := indexKey(prefix, i)
			*out = append(*out, p)
			treePaths(p, e, out)
		}
	case []any:
		for i, e := range v {
			p := indexKey(prefix, i)
			*out = append(*out, p)
			treePaths(p, e, out)
		}
	}
}

// FuzzKeyLines checks that the scanner never panics or hangs, and that on
// any document the TOML library accepts it finds a plausible line for every
// key the library decoded.
func FuzzKeyLines(f *testing.F) {
	seeds := []string{
		"a = 1\n[b]\nc = [1,\n2]\n[[d]]\ne = { f = 1 }\n[[d]]\n",
		"x = \"\"\"\n[y]\n\"\"\"\n'q.k' = 1\n",
		"a.b.\"c.d\" = 1\n[e . 'f']\ng = 1979-05-27 07:32:00\n",
		"t = {\n a = [ { b = 1 } ],\n}\n",
		"\"\\u00e9\" = 1\n\"\\x41\" = 2\n",
		"[[a.b]]\n[a]\nc = 1\n[[a.b]]\n",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		lines := keyLines(doc)
		var m map[string]any
		if _, err := toml.Decode(doc, &m); err != nil {
			return
		}
		// A BOM is skipped by the library but not by the scanner; the loader
		// strips it before either runs.
		if strings.HasPrefix(doc, "\uFEFF") {
			return
		}
		var paths []string
		treePaths("", m, &paths)
		nlines := strings.Count(doc, "\n") + 1
		// Values nested deeper than maxInlineDepth are skipped on purpose;
		// then only an enclosing key needs a line.
		deep := strings.Count(doc, "[")+strings.Count(doc, "{") > maxInlineDepth
		for _, p := range paths {
			l, ok := lines[p]
			for deep && !ok && p != "" {
				p = p[:max(strings.LastIndexAny(p, ".["), 0)]
				l, ok = lines[p]
			}
			if !ok {
				t.Fatalf("no line for %s in:\n%s", p, doc)
			}
			if l < 1 || l > nlines {
				t.Fatalf("line %d for %s is outside the document (%d lines)", l, p, nlines)
			}
		}
	})
}
