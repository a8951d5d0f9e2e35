package packaging

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestBuildRefusesBadVersions(t *testing.T) {
	for _, v := range []string{"1.0", "v1.0.0", "1.0.0-", "01.0.0", "1.0.0 ", "1.0.0-rc_1", "1.0.0+", "latest"} {
		t.Run(v, func(t *testing.T) {
			// The version is checked before anything is built, so an
			// empty output folder stays untouched.
			out := filepath.Join(t.TempDir(), "out")
			_, err := Build(context.Background(), Options{RepoRoot: repoRoot, OutDir: out, Version: v})
			if !errors.Is(err, ErrVersion) {
				t.Fatalf("Build(version %q) = %v, want ErrVersion", v, err)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("output folder created for a refused version: %v", err)
			}
		})
	}
	for _, v := range []string{"0.1.0", "1.0.0-rc.1", "2.10.3+git.5.gabc", "1.0.0-0.3.7+b.1"} {
		if !semver.MatchString(v) {
			t.Errorf("%q refused, want accepted", v)
		}
	}
}

func TestResolveVersion(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	ctx := context.Background()
	dir := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com",
			"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com", "GIT_CONFIG_GLOBAL=/dev/null")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	resolve := func() string {
		t.Helper()
		v, err := ResolveVersion(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	if _, err := ResolveVersion(ctx, dir); err == nil {
		t.Error("no tag and no VERSION file: want an error")
	}
	if err := os.WriteFile(filepath.Join(dir, "VERSION"), []byte("0.3.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := resolve(); got != "0.3.0" {
		t.Errorf("outside git: %q, want the VERSION file's 0.3.0", got)
	}
	git("init", "-q")
	git("add", "VERSION")
	git("commit", "-q", "-m", "one")
	git("tag", "v0.2.9-rc.1")
	git("tag", "release-x") // not a version tag
	if got := resolve(); got != "0.2.9-rc.1" {
		t.Errorf("tagged HEAD: %q, want 0.2.9-rc.1", got)
	}
	git("commit", "-q", "--allow-empty", "-m", "two")
	if got := resolve(); got != "0.3.0" {
		t.Errorf("untagged HEAD: %q, want the VERSION file's 0.3.0", got)
	}
}
