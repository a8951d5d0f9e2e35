package sriovtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEveryTableMaterializes(t *testing.T) {
	tables, err := filepath.Glob(TablePath("*"))
	if err != nil || len(tables) < 4 {
		t.Fatalf("tables %v, %v", tables, err)
	}
	for _, path := range tables {
		name := strings.TrimSuffix(filepath.Base(path), ".sysfs")
		t.Run(name, func(t *testing.T) {
			root := Build(t, name, nil)
			if _, err := os.Stat(filepath.Join(root, "bus", "pci", "devices")); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestTreeRefuses(t *testing.T) {
	tests := []struct{ name, table, want string }{
		{"unknown kind", "sock a", "unknown kind"},
		{"missing path", "file", "missing path"},
		{"link without target", "link a", "missing link target"},
		{"dir with a value", "dir a b", "unexpected value"},
		{"absolute path", "file /etc/passwd x", "leaves the tree"},
		{"escaping path", "file a/../../x y", "leaves the tree"},
		{"escaping link", "link a/b ../../x", "leaves the tree"},
		{"absolute link", "link a /etc", "absolute"},
		{"dangling link", "link a b", "dangling"},
		{"undefined variable", "file ${NOPE}/x y", "undefined NOPE"},
		{"bad variable name", "set ${A} b", "bad variable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tree, err := ParseTree("t", strings.NewReader(tt.table))
			if err == nil {
				err = tree.Materialize(t.TempDir(), nil)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one saying %q", err, tt.want)
			}
		})
	}
}

func TestTreeVariables(t *testing.T) {
	tree, err := ParseTree("t", strings.NewReader("set NAME eth0\nset V 1\nfile class/${NAME}/x ${V} ${V}\nlink l class/${NAME}\nfifo f\ndir d\n"))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := tree.Materialize(root, map[string]string{"NAME": "rep0"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "l", "x"))
	if err != nil || string(b) != "1 1\n" {
		t.Errorf("through the link: %q, %v", b, err)
	}
	if st, err := os.Stat(filepath.Join(root, "f")); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("fifo: %v, %v", st, err)
	}
}

// FuzzParseTree: any table parses or fails cleanly, and whatever parses
// materializes inside its root or fails cleanly.
func FuzzParseTree(f *testing.F) {
	for _, seed := range []string{
		"set A b\nfile x/${A} 1\nlink y x\n", "dir a\nfifo a/b\n", "link a ../..\n", "file ${", "set\n", "# c\n\nfile a",
		"file a/../../b c", "link a /", "file a\x00b c",
	} {
		f.Add(seed)
	}
	if b, err := os.ReadFile(TablePath("connectx5-switchdev")); err == nil {
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, table string) {
		tree, err := ParseTree("fuzz", strings.NewReader(table))
		if err != nil {
			return
		}
		parent := t.TempDir()
		root := filepath.Join(parent, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = tree.Materialize(root, nil)
		entries, err := os.ReadDir(parent)
		if err != nil || len(entries) != 1 {
			t.Fatalf("Materialize wrote outside its root: %v %v", entries, err)
		}
	})
}
