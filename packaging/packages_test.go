package packaging

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// The lifecycle tests install an older build and upgrade it to a newer one.
// Their versions are fixed rather than taken from the repository, so that
// the older one always sorts first on both formats ("~" on Debian).
const (
	oldVersion = "1.0.0-rc.1"
	newVersion = "1.0.0"
	repoRoot   = ".."
)

// oldConfigMarker is added to the configuration the older build ships, so
// that the upgrade meets a changed conffile, the case in which dpkg and
// rpm must choose between the operator's edit and the package's file.
const oldConfigMarker = "# shipped by the older test build\n"

var (
	buildDir  string // removed by TestMain
	buildOnce = map[string]*sync.Once{oldVersion: {}, newVersion: {}}
	builds    sync.Map // version -> *builtPackages
)

type builtPackages struct {
	deb, rpm string
	err      error
}

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "vsagent-packages-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireBuildTools skips when the packages cannot be built here.
func requireBuildTools(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("the go command is not in PATH")
	}
	if testing.Short() {
		t.Skip("-short: building the packages takes a minute")
	}
}

// packages returns the .deb and .rpm of one of the two test versions,
// building them on first use. Several tests share a build.
func packages(t *testing.T, version string) (deb, rpm string) {
	t.Helper()
	requireBuildTools(t)
	b := buildPackages(version)
	if b.err != nil {
		t.Fatalf("build %s: %v", version, b.err)
	}
	return b.deb, b.rpm
}

// buildPackages builds one test version once; it is safe to call from
// several goroutines.
func buildPackages(version string) *builtPackages {
	buildOnce[version].Do(func() {
		b := &builtPackages{}
		defer builds.Store(version, b)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		opts := Options{
			RepoRoot: repoRoot,
			OutDir:   filepath.Join(buildDir, version),
			Version:  version,
			Log:      slog.New(slog.NewTextHandler(testLogWriter{}, nil)),
		}
		if version == oldVersion {
			if opts.Config, b.err = olderConfig(); b.err != nil {
				return
			}
		}
		start := time.Now()
		res, err := Build(ctx, opts)
		if err != nil {
			b.err = err
			return
		}
		for _, p := range res.Packages {
			switch p.Format {
			case "deb":
				b.deb = p.Path
			case "rpm":
				b.rpm = p.Path
			}
		}
		fmt.Fprintf(testLogWriter{}, "built %s packages in %s\n", version, time.Since(start).Round(100*time.Millisecond))
	})
	v, _ := builds.Load(version)
	return v.(*builtPackages)
}

// olderConfig writes a copy of nfpm.yaml whose vsagent.toml is the
// shipped one plus oldConfigMarker.
func olderConfig() (string, error) {
	const shipped = "src: packaging/etc/vsagent.toml"
	yaml, err := os.ReadFile(filepath.Join(repoRoot, ConfigPath))
	if err != nil {
		return "", err
	}
	if strings.Count(string(yaml), shipped) != 1 {
		return "", fmt.Errorf("%s: want exactly one %q", ConfigPath, shipped)
	}
	toml, err := os.ReadFile(filepath.Join(repoRoot, "packaging/etc/vsagent.toml"))
	if err != nil {
		return "", err
	}
	dir := filepath.Join(buildDir, "older")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	oldToml := filepath.Join(dir, "vsagent.toml")
	if err := os.WriteFile(oldToml, append([]byte(oldConfigMarker), toml...), 0o644); err != nil {
		return "", err
	}
	oldYaml := filepath.Join(dir, "nfpm.yaml")
	return oldYaml, os.WriteFile(oldYaml, []byte(strings.Replace(string(yaml), shipped, "src: "+oldToml, 1)), 0o644)
}

// testLogWriter shows the builder's progress in verbose test output.
type testLogWriter struct{}

func (testLogWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		os.Stderr.Write(p)
	}
	return len(p), nil
}
