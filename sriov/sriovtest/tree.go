package sriovtest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// Entry kinds of a Tree.
const (
	KindDir  = "dir"
	KindFile = "file"
	KindLink = "link"
	// KindFIFO is a named pipe: a sysfs attribute whose write blocks until
	// someone reads it, like sriov_numvfs while the kernel resets a NIC.
	KindFIFO = "fifo"
)

// Entry is one line of a Tree: a directory, a file with its content, a
// symlink with its (relative) target, or a FIFO.
type Entry struct {
	Kind  string
	Path  string
	Value string
	Line  int
}

// Tree is a fake sysfs tree declared as a table. Vars are the defaults of
// the ${NAME} placeholders in its entries.
type Tree struct {
	Name    string
	Vars    map[string]string
	Entries []Entry
}

// ParseTree reads the table format:
//
//	# comment
//	set NAME VALUE
//	dir PATH
//	file PATH CONTENT…
//	link PATH TARGET
//	fifo PATH
//
// Placeholders stay unexpanded until Materialize.
func ParseTree(name string, r io.Reader) (Tree, error) {
	t := Tree{Name: name, Vars: map[string]string{}}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		path, value, _ := strings.Cut(rest, " ")
		value = strings.TrimSpace(value)
		bad := func(why string) (Tree, error) {
			return Tree{}, fmt.Errorf("%s:%d: %s: %q", name, n, why, line)
		}
		if path == "" {
			return bad("missing path or name")
		}
		switch kind {
		case "set":
			if strings.ContainsAny(path, "${}") {
				return bad("bad variable name")
			}
			t.Vars[path] = value
			continue
		case KindDir, KindFIFO:
			if value != "" {
				return bad("unexpected value")
			}
		case KindLink:
			if value == "" {
				return bad("missing link target")
			}
		case KindFile:
		default:
			return bad("unknown kind")
		}
		t.Entries = append(t.Entries, Entry{Kind: kind, Path: path, Value: value, Line: n})
	}
	if err := sc.Err(); err != nil {
		return Tree{}, fmt.Errorf("%s: %w", name, err)
	}
	return t, nil
}

// TablePath is the path of one of the NIC tables in sriov/testdata/nics
// ("e810-legacy", "connectx5-switchdev", …), from any package's tests.
func TablePath(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", "nics", name+".sysfs")
}

// LoadTree parses the NIC table name (see TablePath).
func LoadTree(name string) (Tree, error) {
	f, err := os.Open(TablePath(name))
	if err != nil {
		return Tree{}, err
	}
	defer f.Close()
	return ParseTree(name, f)
}

// Materialize creates the tree under root with vars overriding the
// table's defaults, and checks that every symlink resolves inside root.
func (t Tree) Materialize(root string, vars map[string]string) error {
	var missing []string
	expand := func(s string) string {
		return os.Expand(s, func(k string) string {
			if v, ok := vars[k]; ok {
				return v
			}
			if v, ok := t.Vars[k]; ok {
				return v
			}
			missing = append(missing, k)
			return ""
		})
	}
	inside := func(p string) (string, error) {
		clean := filepath.Clean(p)
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			return "", fmt.Errorf("%q leaves the tree", p)
		}
		return filepath.Join(root, clean), nil
	}
	var links []Entry
	for _, e := range t.Entries {
		path, value := expand(e.Path), expand(e.Value)
		if len(missing) > 0 {
			return fmt.Errorf("%s:%d: undefined %s", t.Name, e.Line, strings.Join(missing, ", "))
		}
		full, err := inside(path)
		if err != nil {
			return fmt.Errorf("%s:%d: %w", t.Name, e.Line, err)
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		switch e.Kind {
		case KindDir:
			err = os.MkdirAll(full, 0o755)
		case KindFile:
			err = os.WriteFile(full, []byte(value+"\n"), 0o644)
		case KindFIFO:
			err = syscall.Mkfifo(full, 0o644)
		case KindLink:
			if filepath.IsAbs(value) {
				return fmt.Errorf("%s:%d: link target %q is absolute", t.Name, e.Line, value)
			}
			if _, err := inside(filepath.Join(filepath.Dir(path), value)); err != nil {
				return fmt.Errorf("%s:%d: link target: %w", t.Name, e.Line, err)
			}
			err = os.Symlink(value, full)
			links = append(links, Entry{Kind: e.Kind, Path: full, Line: e.Line})
		}
		if err != nil {
			return fmt.Errorf("%s:%d: %w", t.Name, e.Line, err)
		}
	}
	for _, l := range links {
		if _, err := os.Stat(l.Path); err != nil {
			return fmt.Errorf("%s:%d: dangling link: %w", t.Name, l.Line, err)
		}
	}
	return nil
}

// Build loads the NIC table name and materializes it into a fresh
// temporary directory, which it returns as the sysfs root.
func Build(tb testing.TB, name string, vars map[string]string) string {
	tb.Helper()
	t, err := LoadTree(name)
	if err != nil {
		tb.Fatal(err)
	}
	root := tb.TempDir()
	if err := t.Materialize(root, vars); err != nil {
		tb.Fatal(err)
	}
	return root
}
