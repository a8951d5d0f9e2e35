package packaging

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// NFPM is the pinned nfpm command line, run with `go run`. As a library it
// would add some forty modules (git, ssh, PGP, terminal UI) to vsagent's
// go.mod, raise its go directive and upgrade shared dependencies, all for a
// build step the daemon never links. v2.45.0 is the newest release whose
// whole module graph the Go module proxy serves (v2.46.0 and later need
// modules from go.digitalxero.dev, which it refuses).
const NFPM = "github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.0"

// Formats are the package formats Build makes by default.
var Formats = []string{"deb", "rpm"}

// ConfigPath is the nfpm configuration, relative to the repository root.
const ConfigPath = "packaging/nfpm.yaml"

const versionVar = "github.com/vsagent/vsagent/internal/version.Version"

// ErrVersion is returned for a version that is not semantic versioning,
// which nfpm needs to order releases correctly on both formats.
var ErrVersion = errors.New("packaging: version must be MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]")

var semver = regexp.MustCompile(`^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$`)

// Options says what Build makes.
type Options struct {
	// RepoRoot is the repository's root directory; the nfpm configuration's
	// sources are relative to it.
	RepoRoot string
	// OutDir receives the packages; it is created if needed.
	OutDir string
	// Version is embedded in the binaries and names the packages; ""
	// resolves it with ResolveVersion.
	Version string
	// Formats defaults to Formats.
	Formats []string
	// Config is the nfpm configuration file; "" means ConfigPath under
	// RepoRoot.
	Config string
	// Go is the go command; "" means "go" from PATH.
	Go string
	// Log receives one line per step; nil keeps quiet.
	Log *slog.Logger
}

// Package is one built package file.
type Package struct {
	Format string
	Path   string
	Size   int64
}

// Result is what Build made.
type Result struct {
	Version  string
	Packages []Package
}

// Build compiles vsagent, vsactl, vsafilter and vsagent-hook for the host's
// architecture with the version embedded, generates their man pages and
// vsactl's shell completions by running them, and has nfpm package
// everything. The programs run during the build, so cross-building is not
// supported.
func Build(ctx context.Context, o Options) (*Result, error) {
	if o.RepoRoot == "" {
		return nil, errors.New("packaging: no repository root")
	}
	root, err := filepath.Abs(o.RepoRoot)
	if err != nil {
		return nil, fmt.Errorf("packaging: %w", err)
	}
	if o.Go == "" {
		o.Go = "go"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(o.Formats) == 0 {
		o.Formats = Formats
	}
	if o.Config == "" {
		o.Config = filepath.Join(root, ConfigPath)
	}
	if o.Version == "" {
		if o.Version, err = ResolveVersion(ctx, root); err != nil {
			return nil, err
		}
	}
	if !semver.MatchString(o.Version) {
		return nil, fmt.Errorf("%w, not %q", ErrVersion, o.Version)
	}
	outDir, err := filepath.Abs(o.OutDir)
	if err != nil {
		return nil, fmt.Errorf("packaging: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("packaging: %w", err)
	}
	stage, err := os.MkdirTemp("", "vsagent-stage-")
	if err != nil {
		return nil, fmt.Errorf("packaging: %w", err)
	}
	defer os.RemoveAll(stage)

	b := builder{Options: o, root: root, stage: stage}
	if err := b.binaries(ctx); err != nil {
		return nil, err
	}
	if err := b.manPages(ctx); err != nil {
		return nil, err
	}
	if err := b.completions(ctx); err != nil {
		return nil, err
	}
	res := &Result{Version: o.Version, Packages: make([]Package, len(o.Formats))}
	err = parallel(len(o.Formats), func(i int) error {
		p, err := b.nfpm(ctx, o.Formats[i], outDir)
		if err == nil {
			res.Packages[i] = *p
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// ResolveVersion returns the release tag on the checked-out commit (vX.Y.Z,
// without the v) when there is one, else the VERSION file's content.
func ResolveVersion(ctx context.Context, root string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", "describe", "--tags", "--exact-match", "--match", "v[0-9]*", "HEAD")
	cmd.Dir = root
	if out, err := cmd.Output(); err == nil {
		return strings.TrimPrefix(strings.TrimSpace(string(out)), "v"), nil
	}
	data, err := os.ReadFile(filepath.Join(root, "VERSION"))
	if err != nil {
		return "", fmt.Errorf("packaging: no release tag on HEAD and no VERSION file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

type builder struct {
	Options
	root, stage string
}

// run runs a command in the repository root and returns its standard
// output; a failure carries its standard error.
func (b *builder) run(ctx context.Context, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = b.root
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("packaging: %s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

func (b *builder) binaries(ctx context.Context) error {
	ldflags := "-s -w -X " + versionVar + "=" + b.Version
	// vsagent needs libvirt through cgo; the others are static so that
	// vsactl runs anywhere, the hook needs nothing but the kernel, and
	// vsafilter fits the appliance image. The two builds run at once: each
	// ends in single-threaded links.
	sets := []struct {
		cgo   string
		mains []string
	}{
		{"1", []string{"./cmd/vsagent"}},
		{"0", []string{"./cmd/vsactl", "./cmd/vsafilter", "./cmd/vsagent-hook"}},
	}
	return parallel(len(sets), func(i int) error {
		set := sets[i]
		b.Log.Info("go build", "mains", set.mains, "cgo", set.cgo, "version", b.Version)
		args := append([]string{"build", "-trimpath", "-ldflags", ldflags, "-o", b.stage + "/"}, set.mains...)
		_, err := b.run(ctx, []string{"CGO_ENABLED=" + set.cgo}, b.Go, args...)
		return err
	})
}

// parallel runs f(0) to f(n-1) at once and returns their errors joined.
func parallel(n int, f func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (b *builder) manPages(ctx context.Context) error {
	date := buildTime(ctx, b.root)
	for _, page := range manPages {
		var helps []helpText
		for _, args := range page.helps {
			out, err := helpOutput(ctx, filepath.Join(b.stage, page.name), args)
			if err != nil {
				return err
			}
			helps = append(helps, helpText{args: args, text: out})
		}
		roff := renderManPage(page, b.Version, date, helps)
		name := fmt.Sprintf("%s.%d.gz", page.name, page.section)
		if err := writeGzip(filepath.Join(b.stage, name), roff); err != nil {
			return err
		}
	}
	return nil
}

// helpOutput runs a program's help command. Go's flag package exits 2
// after printing -h usage, so 2 with output is a help text too.
func helpOutput(ctx context.Context, prog string, args []string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 2 && out.Len() > 0) {
		return "", fmt.Errorf("packaging: help text of %s %s: %w\n%s", filepath.Base(prog), strings.Join(args, " "), err, out.Bytes())
	}
	if out.Len() == 0 {
		return "", fmt.Errorf("packaging: %s %s printed no help text", filepath.Base(prog), strings.Join(args, " "))
	}
	return out.String(), nil
}

// writeGzip compresses deterministically (no name, no time stamp), as
// dh_compress does, so equal inputs give byte-identical packages.
func writeGzip(path string, data []byte) error {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// completionFiles maps each shell to the staged file nfpm.yaml installs.
var completionFiles = map[string]string{
	"bash": "vsactl.bash",
	"zsh":  "_vsactl",
	"fish": "vsactl.fish",
}

func (b *builder) completions(ctx context.Context) error {
	for shell, file := range completionFiles {
		out, err := b.run(ctx, nil, filepath.Join(b.stage, "vsactl"), "completion", shell)
		if err != nil {
			return err
		}
		if len(out) == 0 {
			return fmt.Errorf("packaging: vsactl completion %s printed nothing", shell)
		}
		if err := os.WriteFile(filepath.Join(b.stage, file), out, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// nfpm makes one package in a directory of its own, so the file nfpm names
// is the only one there, and moves it into outDir.
func (b *builder) nfpm(ctx context.Context, format, outDir string) (*Package, error) {
	target, err := os.MkdirTemp(b.stage, format+"-")
	if err != nil {
		return nil, err
	}
	env := []string{
		"VSAGENT_VERSION=" + b.Version,
		"VSAGENT_ARCH=" + runtime.GOARCH,
		"VSAGENT_STAGE=" + b.stage,
	}
	if os.Getenv("SOURCE_DATE_EPOCH") == "" {
		env = append(env, "SOURCE_DATE_EPOCH="+strconv.FormatInt(buildTime(ctx, b.root).Unix(), 10))
	}
	b.Log.Info("nfpm", "format", format, "version", b.Version, "nfpm", NFPM)
	if _, err := b.run(ctx, env, b.Go, "run", NFPM, "package", "--config", b.Config, "--packager", format, "--target", target+"/"); err != nil {
		return nil, err
	}
	made, err := filepath.Glob(filepath.Join(target, "*."+format))
	if err != nil || len(made) != 1 {
		return nil, fmt.Errorf("packaging: nfpm made %d .%s files, want 1", len(made), format)
	}
	dst := filepath.Join(outDir, filepath.Base(made[0]))
	if err := os.Rename(made[0], dst); err != nil {
		return nil, fmt.Errorf("packaging: %w", err)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		return nil, fmt.Errorf("packaging: %w", err)
	}
	b.Log.Info("package", "path", dst, "bytes", fi.Size())
	return &Package{Format: format, Path: dst, Size: fi.Size()}, nil
}

// buildTime is the time recorded in the packages and man pages: the
// SOURCE_DATE_EPOCH convention of reproducible builds, else the checked-out
// commit's time, else now.
func buildTime(ctx context.Context, root string) time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if sec, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.Unix(sec, 0).UTC()
		}
	}
	cmd := exec.CommandContext(ctx, "git", "log", "-1", "--format=%ct")
	cmd.Dir = root
	if out, err := cmd.Output(); err == nil {
		if sec, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil {
			return time.Unix(sec, 0).UTC()
		}
	}
	return time.Now().UTC()
}
