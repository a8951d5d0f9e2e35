// Command build-packages builds vsagent's .deb and .rpm (docs/packaging.md).
// `make package` runs it from the repository root.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vsagent/vsagent/packaging"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("build-packages", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "dist", "`directory` that receives the packages")
	version := fs.String("version", "", "`version` to build (default: the release tag on HEAD, else the VERSION file)")
	formats := fs.String("formats", strings.Join(packaging.Formats, ","), "comma-separated package `formats`")
	printVersion := fs.Bool("print-version", false, "print the version that would be built and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "build-packages: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *printVersion {
		v := *version
		if v == "" {
			var err error
			if v, err = packaging.ResolveVersion(ctx, "."); err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
		}
		fmt.Fprintln(stdout, v)
		return 0
	}
	res, err := packaging.Build(ctx, packaging.Options{
		RepoRoot: ".",
		OutDir:   *out,
		Version:  *version,
		Formats:  strings.Split(*formats, ","),
		Log:      slog.New(slog.NewTextHandler(stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, p := range res.Packages {
		fmt.Fprintf(stdout, "%s\t%d bytes\n", p.Path, p.Size)
	}
	return 0
}
