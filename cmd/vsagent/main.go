// Command vsagent is the vsagent daemon and its admin subcommands.
package main

import (
	"fmt"
	"os"

	"github.com/vsagent/vsagent/internal/version"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "check-config" {
		os.Exit(runCheckConfig(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println("vsagent", version.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: vsagent version")
	os.Exit(2)
}
