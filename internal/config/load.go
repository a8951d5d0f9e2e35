package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// maxFileSize bounds what is read for one configuration file or template:
// anything bigger is a mistake (a disk image named like a template), not
// configuration.
const maxFileSize = 4 << 20

// Load reads the configuration file at path and then every conf.d/*.toml
// beside it in lexical order, applies defaults and validates everything.
// Templates are resolved relative to the file that names them. On failure the
// error is an Errors value listing every problem found.
func Load(path string) (*Config, error) {
	return load(osSource{}, path, nil)
}

// Parse parses one configuration file already in memory, named name in
// messages, resolving templates relative to baseDir ("" is the working
// directory). It reads no conf.d.
func Parse(name string, data []byte, baseDir string) (*Config, error) {
	if baseDir == "" {
		baseDir = "."
	}
	l := newLoader(osSource{}, nil)
	l.file(name, baseDir, data, true)
	return l.result()
}

// ParseFS is Load on a file system other than the host's, such as an
// embedded one: it reads name and the conf.d/*.toml beside it from fsys, and
// templates must lie inside fsys.
func ParseFS(fsys fs.FS, name string) (*Config, error) {
	return load(fsSource{fsys}, name, nil)
}

// load is Load and ParseFS; asked, if not nil, collects the schema's keys.
func load(src source, name string, asked map[string]bool) (*Config, error) {
	l := newLoader(src, asked)
	data, err := src.readFile(name)
	if err != nil {
		l.errs = append(l.errs, &Error{File: name, Msg: fmt.Sprintf("cannot read configuration: %v", unwrapPath(err)), Err: err})
		return l.result()
	}
	dir := src.dir(name)
	l.file(name, dir, data, true)
	l.confD(src.join(dir, "conf.d"))
	return l.result()
}

// source abstracts where files come from, so the same loader serves the
// host's file system (with absolute template paths allowed) and an fs.FS.
type source interface {
	readFile(name string) ([]byte, error)
	readDir(dir string) ([]fs.DirEntry, error)
	dir(name string) string
	join(dir, name string) string
	// resolve turns a template path, relative to dir, into a name readFile
	// accepts.
	resolve(dir, rel string) (string, error)
	// location is how a resolved template is remembered in Appliance.TemplatePath.
	location(name string) string
}

type osSource struct{}

func (osSource) readFile(name string) ([]byte, error) {
	// Opening a FIFO or a device could block or never end: only regular
	// files are configuration.
	if st, err := os.Stat(name); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, &fs.PathError{Op: "open", Path: name, Err: errNotRegular}
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f)
}

func (osSource) readDir(dir string) ([]fs.DirEntry, error) { return os.ReadDir(dir) }
func (osSource) dir(name string) string                    { return filepath.Dir(name) }
func (osSource) join(dir, name string) string              { return filepath.Join(dir, name) }

func (osSource) resolve(dir, rel string) (string, error) {
	if filepath.IsAbs(rel) {
		return filepath.Clean(rel), nil
	}
	return filepath.Join(dir, rel), nil
}

func (osSource) location(name string) string {
	if abs, err := filepath.Abs(name); err == nil {
		return abs
	}
	return name
}

type fsSource struct{ fsys fs.FS }

func (s fsSource) readFile(name string) ([]byte, error) {
	f, err := s.fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f)
}

func (s fsSource) readDir(dir string) ([]fs.DirEntry, error) { return fs.ReadDir(s.fsys, dir) }
func (fsSource) dir(name string) string                      { return path.Dir(name) }
func (fsSource) join(dir, name string) string                { return path.Join(dir, name) }

func (fsSource) resolve(dir, rel string) (string, error) {
	if path.IsAbs(rel) {
		return "", fmt.Errorf("template %q must be a relative path here", rel)
	}
	p := path.Join(dir, rel)
	if !fs.ValidPath(p) {
		return "", fmt.Errorf("template %q points outside the configuration's directory", rel)
	}
	return p, nil
}

func (fsSource) location(name string) string { return name }

var errNotRegular = errors.New("not a regular file")

func readLimited(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("larger than %d MiB", maxFileSize>>20)
	}
	return data, nil
}

// unwrapPath drops the operation and path of a *fs.PathError, which every
// message already names.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// applianceDecl and policyDecl keep the table each entry came from, so that
// checks across files can still point at the right file and line.
type applianceDecl struct {
	a Appliance
	t *table
}

type policyDecl struct {
	p           Policy
	t           *table
	classifiers []*table
}

type loader struct {
	src  source
	cfg  *Config
	errs Errors
	rank map[string]int // file name → read order, for sorting errors

	appliances []applianceDecl
	policies   []policyDecl
	// unparsed is set when a file had a syntax error: its appliances are
	// unknown, so chains naming them must not be reported as dangling.
	unparsed bool
	asked    map[string]bool
}

func newLoader(src source, asked map[string]bool) *loader {
	return &loader{src: src, cfg: defaults(), rank: make(map[string]int), asked: asked}
}

// confD reads dir/*.toml in lexical order; a missing directory is fine.
// Hidden files are skipped, as the shell's * would, so editor backups such
// as ".web.toml.swp" or ".#web.toml" never become configuration.
func (l *loader) confD(dir string) {
	entries, err := l.src.readDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		l.errs = append(l.errs, &Error{File: dir, Msg: fmt.Sprintf("cannot read directory: %v", unwrapPath(err)), Err: err})
		return
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".toml") && !strings.HasPrefix(e.Name(), ".") && !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	for _, n := range names {
		name := l.src.join(dir, n)
		data, err := l.src.readFile(name)
		if err != nil {
			l.rank[name] = len(l.rank)
			l.errs = append(l.errs, &Error{File: name, Msg: fmt.Sprintf("cannot read: %v", unwrapPath(err)), Err: err})
			continue
		}
		l.file(name, dir, data, false)
	}
}

// file decodes one file. The main file may hold every section; conf.d files
// only [[appliance]] and [[policy]].
func (l *loader) file(name, dir string, data []byte, main bool) {
	l.rank[name] = len(l.rank)
	l.cfg.Files = append(l.cfg.Files, name)
	doc := strings.TrimPrefix(string(data), "\uFEFF")
	var raw map[string]any
	if _, err := toml.Decode(doc, &raw); err != nil {
		l.unparsed = true
		e := &Error{File: name, Msg: "TOML syntax error: " + oneLine(err.Error()), Err: err}
		var pe toml.ParseError
		if errors.As(err, &pe) {
			e.Line = pe.Position.Line
			e.Msg = "TOML syntax error: " + oneLine(pe.Message)
		}
		l.errs = append(l.errs, e)
		return
	}
	d := &fileDecoder{file: name, lines: keyLines(doc), errs: &l.errs, asked: l.asked}
	root := newTable(d, "", "", 0, raw)
	if main {
		l.agent(root.sub("agent"))
		l.dataplane(root.sub("dataplane"))
		l.intercept(root.sub("intercept"))
		l.metrics(root.sub("metrics"))
		l.scaling(root.sub("scaling"))
	} else {
		for _, key := range slices.Sorted(maps.Keys(raw)) {
			if key != "appliance" && key != "policy" {
				root.get(key)
				root.errorf(key, "not allowed in a conf.d file, which may only add [[appliance]] and [[policy]] entries")
			}
		}
	}
	for _, t := range root.tables("appliance") {
		l.appliance(t, dir)
	}
	for _, t := range root.tables("policy") {
		l.policy(t)
	}
	root.finish()
}

// oneLine keeps every error on one line of output, whatever the library
// put in its message.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// result runs the checks that need every file and returns the outcome.
func (l *loader) result() (*Config, error) {
	l.crossCheck()
	if len(l.errs) > 0 {
		sortErrors(l.errs, l.rank)
		return nil, l.errs
	}
	for _, a := range l.appliances {
		l.cfg.Appliances = append(l.cfg.Appliances, a.a)
	}
	for _, p := range l.policies {
		l.cfg.Policies = append(l.cfg.Policies, p.p)
	}
	return l.cfg, nil
}
