package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/version"
)

// Exit statuses; documented in docs/operations.md, and scripts rely on
// them, so they never change meaning.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitUnreachable = 3
)

// socketEnv overrides the default socket path; --socket overrides both.
const socketEnv = "VSACTL_SOCKET"

// options are the parsed flags of one invocation.
type options struct {
	socket  string
	json    bool
	timeout time.Duration
	guest   string
	follow  bool
	after   uint64
}

// command is one subcommand. The table drives parsing, help and the shell
// completions, so they cannot disagree.
type command struct {
	name    string
	args    string // usage of the positional arguments
	summary string
	nargs   int // exact number of positional arguments; -1: any
	hidden  bool
	// complete names what the positional argument completes to:
	// "domains", "shells", "commands" or nothing.
	complete string
	flags    func(fs *flag.FlagSet, o *options)
	run      func(c *cli, ctx context.Context, args []string) error
}

var commands []command

func init() {
	// Assigned here because the completion command refers to the table.
	commands = []command{
		{name: "status", summary: "agent health, libvirt connection and counts", run: (*cli).status},
		{name: "guests", summary: "every guest: its policy, chain and gate state", run: (*cli).guests},
		{name: "appliances", summary: "appliance instances: state, health, utilisation", run: (*cli).appliances},
		{name: "flows", summary: "the dataplane's flows", run: (*cli).flows,
			flags: func(fs *flag.FlagSet, o *options) {
				fs.StringVar(&o.guest, "guest", "", "only the flows of guest `NAME`")
			}},
		{name: "events", summary: "the agent's event log: gates, timeouts, appliances, drops, scaling, failures", run: (*cli).events,
			flags: func(fs *flag.FlagSet, o *options) {
				fs.BoolVar(&o.follow, "follow", false, "keep printing events as they happen")
				fs.BoolVar(&o.follow, "f", false, "short for --follow")
				fs.Uint64Var(&o.after, "after", 0, "only events after sequence number `SEQ`")
			}},
		{name: "explain", args: "DOMAIN", nargs: 1, complete: "domains", summary: "which policy governs a domain and why, and each classifier's chain", run: (*cli).explain},
		{name: "completion", args: "bash|zsh|fish", nargs: 1, complete: "shells", summary: "print a shell completion script", run: (*cli).completion},
		{name: "version", summary: "print vsactl's version", run: (*cli).version},
		{name: "help", args: "[COMMAND]", nargs: -1, complete: "commands", summary: "show help", run: (*cli).help},
		{name: "__names", args: "guests|domains", nargs: 1, hidden: true, run: (*cli).names},
	}
}

func lookupCommand(name string) (*command, bool) {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i], true
		}
	}
	return nil, false
}

// usageError is a mistake on the command line: exit 2, with usage.
type usageError struct {
	msg string
	cmd *command
}

func (e *usageError) Error() string { return e.msg }

func usagef(cmd *command, format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), cmd: cmd}
}

// helpRequest is -h or --help: usage on stdout, exit 0.
type helpRequest struct{ cmd *command }

func (*helpRequest) Error() string { return "help requested" }

func globalFlags(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.socket, "socket", "", "control socket `PATH` (default $"+socketEnv+", else "+api.DefaultSocket+")")
	fs.BoolVar(&o.json, "json", false, "print JSON for scripts instead of tables")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "give up on the agent after `DURATION`")
}

func newFlagSet(cmd *command, o *options) *flag.FlagSet {
	name := "vsactl"
	if cmd != nil {
		name += " " + cmd.name
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	globalFlags(fs, o)
	if cmd != nil && cmd.flags != nil {
		cmd.flags(fs, o)
	}
	return fs
}

// parseArgs reads `[global flags] COMMAND [flags and arguments in any
// order]`. Flags may follow arguments (`vsactl explain web-1 --json`), and
// `--` ends the flags.
func parseArgs(args []string) (*command, options, []string, error) {
	var scratch options
	top := newFlagSet(nil, &scratch)
	globals, rest := splitFlags(top, args, true)
	if err := top.Parse(globals); err != nil {
		return nil, scratch, nil, flagError(nil, err)
	}
	if len(rest) == 0 {
		return nil, scratch, nil, usagef(nil, "no command given")
	}
	cmd, ok := lookupCommand(rest[0])
	if !ok {
		return nil, scratch, nil, usagef(nil, "unknown command %q", rest[0])
	}
	// Defining a flag resets its variable to the default, so the global
	// flags are parsed again, together with the command's own.
	var o options
	fs := newFlagSet(cmd, &o)
	own, positional := splitFlags(fs, rest[1:], false)
	if err := fs.Parse(append(globals, own...)); err != nil {
		return cmd, o, nil, flagError(cmd, err)
	}
	if cmd.nargs >= 0 && len(positional) != cmd.nargs {
		if len(positional) < cmd.nargs {
			return cmd, o, nil, usagef(cmd, "%s: missing %s", cmd.name, cmd.args)
		}
		return cmd, o, nil, usagef(cmd, "%s: unexpected argument %q", cmd.name, positional[cmd.nargs])
	}
	if o.timeout <= 0 {
		return cmd, o, nil, usagef(cmd, "--timeout must be positive")
	}
	return cmd, o, positional, nil
}

func flagError(cmd *command, err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return &helpRequest{cmd: cmd}
	}
	return usagef(cmd, "%v", err)
}

// splitFlags separates flags (with their values) from positional
// arguments. With stopAtArg it stops at the first positional argument,
// which is how the command name ends the global flags.
func splitFlags(fs *flag.FlagSet, args []string, stopAtArg bool) (flags, positional []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return flags, append(positional, args[i+1:]...)
		}
		if len(a) < 2 || a[0] != '-' {
			if stopAtArg {
				return flags, append(positional, args[i:]...)
			}
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil || isBool(f) || i+1 >= len(args) {
			// Unknown flags and missing values are left for Parse to
			// report in its own words.
			continue
		}
		i++
		flags = append(flags, args[i])
	}
	return flags, positional
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// cli is one invocation: its options, output and the agent client.
type cli struct {
	env
	opts   options
	client *api.Client
}

func run(ctx context.Context, args []string, e env) int {
	cmd, o, positional, err := parseArgs(args)
	var hr *helpRequest
	if errors.As(err, &hr) {
		printUsage(e.stdout, hr.cmd)
		return exitOK
	}
	if err != nil {
		return (&cli{env: e}).report(err)
	}
	if o.socket == "" {
		o.socket = e.getenv(socketEnv)
	}
	if o.socket == "" {
		o.socket = api.DefaultSocket
	}
	c := &cli{env: e, opts: o, client: api.NewClient(o.socket)}
	defer c.client.Close()
	err = cmd.run(c, ctx, positional)
	return c.report(err)
}

// report prints err for a human and maps it to the exit status.
func (c *cli) report(err error) int {
	var ue *usageError
	var ae *api.Error
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errQuiet):
		return exitUnreachable
	case errors.As(err, &ue):
		fmt.Fprintf(c.stderr, "vsactl: %s\n", ue.msg)
		printShortUsage(c.stderr, ue.cmd)
		return exitUsage
	case errors.Is(err, api.ErrRefused), errors.Is(err, syscall.EACCES):
		fmt.Fprintf(c.stderr, "vsactl: %v\nvsactl: the control socket serves root only; run vsactl as root (for example with sudo)\n", err)
		return exitUnreachable
	case errors.Is(err, api.ErrUnreachable), errors.Is(err, api.ErrProtocol):
		fmt.Fprintf(c.stderr, "vsactl: %v\nvsactl: is vsagent running? (socket %s; change it with --socket or $%s)\n", err, c.opts.socket, socketEnv)
		return exitUnreachable
	case errors.As(err, &ae):
		fmt.Fprintf(c.stderr, "vsactl: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(c.stderr, "vsactl: %v\n", err)
	return exitFailed
}

// call bounds one request by --timeout.
func (c *cli) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.opts.timeout)
}

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

const mainUsage = "usage: vsactl [--socket PATH] [--json] [--timeout DURATION] COMMAND [ARGS]"

func commandUsage(cmd *command) string {
	u := "usage: vsactl " + cmd.name
	if cmd.flags != nil {
		u += " [flags]"
	}
	if cmd.args != "" {
		u += " " + cmd.args
	}
	return u
}

// printShortUsage follows a usage error: the synopsis and where to read
// more, not a page of help that buries the error.
func printShortUsage(w io.Writer, cmd *command) {
	if cmd == nil || cmd.hidden || cmd.name == "help" {
		fmt.Fprintf(w, "%s\nrun 'vsactl help' for the commands and flags\n", mainUsage)
		return
	}
	fmt.Fprintf(w, "%s\nrun 'vsactl help %s' for its flags\n", commandUsage(cmd), cmd.name)
}

func printUsage(w io.Writer, cmd *command) {
	if cmd != nil && cmd.name != "help" {
		fmt.Fprintf(w, "%s\n\n%s.\n\nflags:\n", commandUsage(cmd), capitalise(cmd.summary))
		var o options
		printDefaults(w, newFlagSet(cmd, &o))
		return
	}
	fmt.Fprint(w, mainUsage+"\n\ncommands:\n")
	for _, c := range commands {
		if c.hidden {
			continue
		}
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nflags (accepted before or after the command):\n")
	var o options
	printDefaults(w, newFlagSet(nil, &o))
	fmt.Fprintf(w, "\nexit status: %d ok, %d the agent answered with an error or the thing asked about does not exist,\n%d usage error, %d the agent cannot be reached.\n",
		exitOK, exitFailed, exitUsage, exitUnreachable)
}

func printDefaults(w io.Writer, fs *flag.FlagSet) {
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func capitalise(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (c *cli) version(context.Context, []string) error {
	fmt.Fprintln(c.stdout, "vsactl", version.Version, "(API "+api.Version+")")
	return nil
}

func (c *cli) help(_ context.Context, args []string) error {
	if len(args) > 1 {
		return usagef(nil, "help: unexpected argument %q", args[1])
	}
	if len(args) == 0 {
		printUsage(c.stdout, nil)
		return nil
	}
	cmd, ok := lookupCommand(args[0])
	if !ok || cmd.hidden {
		return usagef(nil, "help: unknown command %q", args[0])
	}
	printUsage(c.stdout, cmd)
	return nil
}
