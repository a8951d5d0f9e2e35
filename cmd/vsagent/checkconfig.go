package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/vsagent/vsagent/internal/config"
)

// runCheckConfig implements `vsagent check-config [-c FILE]`: it loads the
// configuration exactly as the daemon would and reports every problem. It
// returns the exit status: 0 valid, 1 invalid, 2 usage error.
func runCheckConfig(args []string) int {
	return checkConfig(args, os.Stdout, os.Stderr)
}

func checkConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", config.DefaultPath, "configuration `file`; conf.d/*.toml beside it is read too")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: vsagent check-config [-c FILE]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "check-config: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		var errs config.Errors
		if !errors.As(err, &errs) {
			fmt.Fprintln(stderr, err)
			return 1
		}
		for _, e := range errs {
			fmt.Fprintln(stderr, e)
		}
		return 1
	}
	fmt.Fprintln(stdout, "configuration OK:", cfg.Summary())
	return 0
}
