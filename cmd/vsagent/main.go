// Command vsagent is the vsagent daemon and its admin subcommands.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/vsagent/vsagent/internal/version"
)

const usage = `usage: vsagent COMMAND [flags]

commands:
  run [-c FILE]            run the agent (what systemd starts)
  check-config [-c FILE]   validate a configuration; print every error
  demo [--simulated]       play vsagent's job on a private libvirtd with QEMU guests and appliance VMs (--simulated: control plane only, on libvirt's test driver)
  image COMMAND            build and check the appliance VM image (vsagent image help)
  version                  print the version
`

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return runDaemon(args[1:], stderr)
	case "check-config":
		return runCheckConfig(args[1:])
	case "demo":
		return runDemo(args[1:], stdout, stderr)
	case "image":
		return runImage(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "vsagent", version.Version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "vsagent: unknown command %q\n%s", args[0], usage)
	return 2
}
