package packaging

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/vsagent/vsagent/internal/config"
)

const (
	shippedConfig = "etc/vsagent.toml"
	exampleConfig = "../testdata/config/vsagent.toml"
)

var (
	tableLine     = regexp.MustCompile(`^\[([a-z_.]+)\]\s*$`)
	arrayLine     = regexp.MustCompile(`^\[\[`)
	keyLine       = regexp.MustCompile(`^([a-z_]+) = `)
	commentedLine = regexp.MustCompile(`^# ([a-z_]+ = .*)$`)
)

func readConfig(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestShippedConfigIsInert: the installed configuration must not make the
// agent manage any guest before the operator says so.
func TestShippedConfigIsInert(t *testing.T) {
	cfg, err := config.Parse(shippedConfig, []byte(readConfig(t, shippedConfig)), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Appliances) != 0 || len(cfg.Policies) != 0 {
		t.Errorf("shipped configuration: %s; want no appliances and no policies", cfg.Summary())
	}
}

// TestShippedConfigShowsDefaults: every commented-out key shows its real
// default, so uncommenting all of them changes nothing.
func TestShippedConfigShowsDefaults(t *testing.T) {
	text := readConfig(t, shippedConfig)
	shipped, err := config.Parse(shippedConfig, []byte(text), "")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(text, "\n")
	found := 0
	for i, line := range lines {
		if m := commentedLine.FindStringSubmatch(line); m != nil {
			lines[i] = m[1]
			found++
		}
	}
	if found == 0 {
		t.Fatal("no commented-out key found")
	}
	uncommented := strings.Join(lines, "\n")
	explicit, err := config.Parse("uncommented", []byte(uncommented), "")
	if err != nil {
		t.Fatalf("the shipped file with its keys uncommented is invalid: %v\n%s", err, uncommented)
	}
	if diff := cmp.Diff(shipped, explicit, cmpopts.IgnoreFields(config.Config{}, "Files")); diff != "" {
		t.Errorf("a commented-out key does not show its default (-shipped +uncommented):\n%s", diff)
	}
}

// tableKeys lists "table.key" for the keys of the top-level single tables
// ([agent]; not [[appliance]] nor [policy.match], which belongs to one),
// taking keys as match returns them.
func tableKeys(text string, match func(line string) string) []string {
	var keys []string
	table := ""
	for _, line := range strings.Split(text, "\n") {
		switch {
		case arrayLine.MatchString(line):
			table = ""
		case tableLine.MatchString(line):
			table = tableLine.FindStringSubmatch(line)[1]
			if strings.Contains(table, ".") {
				table = ""
			}
		case table != "":
			if key := match(line); key != "" {
				keys = append(keys, table+"."+key)
			}
		}
	}
	return keys
}

// TestShippedConfigCoversExample: the shipped file lists every key the
// complete example sets in the single tables, so an operator finds them
// where they belong.
func TestShippedConfigCoversExample(t *testing.T) {
	example := tableKeys(readConfig(t, exampleConfig), func(line string) string {
		if m := keyLine.FindStringSubmatch(line); m != nil {
			return m[1]
		}
		return ""
	})
	shipped := tableKeys(readConfig(t, shippedConfig), func(line string) string {
		if m := commentedLine.FindStringSubmatch(line); m != nil {
			return strings.Fields(m[1])[0]
		}
		return ""
	})
	if len(example) == 0 {
		t.Fatalf("no keys found in %s", exampleConfig)
	}
	if diff := cmp.Diff(example, shipped); diff != "" {
		t.Errorf("keys of %s (-) and commented keys of %s (+) differ:\n%s", exampleConfig, shippedConfig, diff)
	}
}
