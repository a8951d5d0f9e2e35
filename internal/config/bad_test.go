package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/bad from the current output")

// badCases lists the corpus: every testdata/bad/NAME.toml, and every
// testdata/bad/NAME/vsagent.toml for cases that need a conf.d directory.
// Each has its expected errors in testdata/bad/NAME.golden.
func badCases(t *testing.T) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join("testdata", "bad"))
	if err != nil {
		t.Fatal(err)
	}
	cases := make(map[string]string)
	for _, e := range entries {
		switch {
		case e.IsDir():
			cases[e.Name()] = filepath.Join("testdata", "bad", e.Name(), "vsagent.toml")
		case strings.HasSuffix(e.Name(), ".toml"):
			cases[strings.TrimSuffix(e.Name(), ".toml")] = filepath.Join("testdata", "bad", e.Name())
		}
	}
	if len(cases) == 0 {
		t.Fatal("no cases in testdata/bad")
	}
	return cases
}

func TestBadConfigs(t *testing.T) {
	cases := badCases(t)
	for name, path := range cases {
		t.Run(name, func(t *testing.T) {
			cfg, err := Load(path)
			if err == nil {
				t.Fatalf("Load(%s) = %s, want errors", path, cfg.Summary())
			}
			if cfg != nil {
				t.Errorf("Load(%s) returned a configuration along with its errors", path)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load(%s) error is %T, want config.Errors", path, err)
			}
			for _, e := range errs {
				if e.File == "" || e.Msg == "" || strings.Contains(e.Error(), "\n") {
					t.Errorf("malformed error %#v", e)
				}
			}
			got := err.Error() + "\n"
			golden := filepath.Join("testdata", "bad", name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("errors of %s differ from %s (-want +got):\n%s", path, golden, diff)
			}
		})
	}
}

// TestBadGoldensHaveCases keeps the corpus tidy: a golden without its input
// would silently stop testing anything.
func TestBadGoldensHaveCases(t *testing.T) {
	cases := badCases(t)
	goldens, err := filepath.Glob(filepath.Join("testdata", "bad", "*.golden"))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range goldens {
		if _, ok := cases[strings.TrimSuffix(filepath.Base(g), ".golden")]; !ok {
			t.Errorf("%s has no input file", g)
		}
	}
}
