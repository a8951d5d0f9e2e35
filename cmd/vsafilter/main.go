// Command vsafilter is the reference header-aware virtual security
// appliance: a stateless filter that judges each inner frame by ordered
// 5-tuple rules and payload signatures and forwards what passes along its
// MSR route. See docs/vsafilter.md.
//
// Usage:
//
//	vsafilter [flags] [run]   serve an interface until SIGTERM
//	vsafilter [flags] check   validate the configuration and exit
//
// It writes JSON lines to stdout: one "ready" line once the socket is
// bound, then "counters" lines every stats interval, on SIGUSR1 and on exit.
// Logs go to stderr. SIGTERM and SIGINT stop it cleanly; SIGHUP is ignored. It never uses cgo, so it builds as a static binary
// that can be the program an appliance VM's init starts.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vsagent/vsagent/appliance"
	"github.com/vsagent/vsagent/internal/version"
	"github.com/vsagent/vsagent/sourceroute"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vsafilter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configPath  = fs.String("c", "", "TOML configuration `file`")
		fromCmdline = fs.Bool("config-from-cmdline", false, "take settings from the kernel command line (vsafilter.* parameters)")
		cmdlinePath = fs.String("cmdline", "/proc/cmdline", "kernel command line `file` for -config-from-cmdline")
		iface       = fs.String("i", "", "`interface` to serve (overrides the configuration)")
		mac         = fs.String("mac", "", "hop `address` (default: the interface's MAC)")
		etherType   = fs.String("ethertype", "", "MSR `EtherType` (default 0x88b5)")
		stats       = fs.String("stats-interval", "", "counters `interval`, 0 for signal and exit only (default 10s)")
		showVersion = fs.Bool("version", false, "print the version and exit")
	)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: vsafilter [flags] [run|check]\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *showVersion {
		fmt.Fprintln(stdout, "vsafilter", version.Version)
		return exitOK
	}
	cmd := "run"
	switch fs.NArg() {
	case 0:
	case 1:
		cmd = fs.Arg(0)
	default:
		fs.Usage()
		return exitUsage
	}
	if cmd != "run" && cmd != "check" {
		fmt.Fprintf(stderr, "vsafilter: unknown command %q\n", cmd)
		fs.Usage()
		return exitUsage
	}

	cfg, source, err := loadConfig(*configPath, *fromCmdline, *cmdlinePath)
	if err == nil {
		flags := map[string]string{}
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "i":
				flags["iface"] = *iface
			case "mac":
				flags["mac"] = *mac
			case "ethertype":
				flags["ethertype"] = *etherType
			case "stats-interval":
				flags["stats"] = *stats
			}
		})
		err = cfg.override(flags, "flag ")
	}
	if err != nil {
		fmt.Fprintf(stderr, "vsafilter: %v\n", err)
		return exitFailed
	}

	if cmd == "check" {
		return check(cfg, source, stdout)
	}
	if cfg.iface == "" {
		fmt.Fprintln(stderr, "vsafilter: no interface: set [interface] name, vsafilter.iface or -i")
		return exitUsage
	}
	log := newLogger(cfg, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	// There is no reload; a hangup (a serial console closing, a habit of
	// sending SIGHUP to reload) must not kill the appliance either.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Warn("SIGHUP ignored: vsafilter does not reload; restart it to apply a new configuration")
		}
	}()
	if err := serve(ctx, cfg, source, stdout, log, usr1); err != nil {
		log.Error("vsafilter failed", "err", err)
		return exitFailed
	}
	return exitOK
}

// loadConfig reads the configuration from the file, or from the kernel
// command line, or starts from the defaults.
func loadConfig(path string, fromCmdline bool, cmdlinePath string) (*config, string, error) {
	if fromCmdline {
		line, err := os.ReadFile(cmdlinePath)
		if err != nil {
			return nil, "", err
		}
		params, err := parseCmdline(string(line))
		if err != nil {
			return nil, "", err
		}
		if path != "" {
			if params["config"] != "" || params["rules"] != "" {
				return nil, "", errors.New("-c and a configuration on the kernel command line both given")
			}
			params["config"] = path
		}
		return configFromCmdline(params)
	}
	if path == "" {
		return defaultConfig(), "defaults", nil
	}
	data, err := readConfigSource(path)
	if err != nil {
		return nil, "", err
	}
	cfg, err := parseConfig(path, data)
	return cfg, path, err
}

func check(cfg *config, source string, stdout io.Writer) int {
	fmt.Fprintf(stdout, "%s: ok: %d rules (default %s), %d signatures (%d automaton states)\n",
		source, len(cfg.rules), cfg.defaultAction, len(cfg.signatures), newFilter(cfg, nil).automatonStates())
	return exitOK
}

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.logFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// recvBuffer absorbs bursts while the single forwarding goroutine is busy.
const recvBuffer = 4 << 20

// serve runs the appliance until ctx ends, printing counters as it goes.
func serve(ctx context.Context, cfg *config, source string, stdout io.Writer, log *slog.Logger, usr1 <-chan os.Signal) error {
	ifi, err := waitForInterface(ctx, cfg.iface, cfg.wait)
	if err != nil {
		return err
	}
	if cfg.bringUp && ifi.Flags&net.FlagUp == 0 {
		link, err := netlink.LinkByName(cfg.iface)
		if err == nil {
			err = netlink.LinkSetUp(link)
		}
		if err != nil {
			return fmt.Errorf("bringing %s up: %w", cfg.iface, err)
		}
		log.Info("brought interface up", "interface", cfg.iface)
	}
	var ifMAC sourceroute.MAC
	copy(ifMAC[:], ifi.HardwareAddr)
	self := cfg.mac
	if self.IsZero() {
		self = ifMAC
	}
	if self.IsZero() || self.IsMulticast() {
		return fmt.Errorf("interface %s has no unicast MAC (%s); set one with -mac", cfg.iface, self)
	}
	promisc := cfg.promiscuous || self != ifMAC
	tr, err := appliance.OpenPacket(cfg.iface, appliance.PacketConfig{
		EtherType: cfg.etherType, OnlyTo: self, Promiscuous: promisc, RecvBuffer: recvBuffer,
	})
	if err != nil {
		return err
	}
	defer tr.Close()

	events := appliance.NewRateLimitedHandler(log.Handler(), cfg.logEvery, cfg.logBurst)
	f := newFilter(cfg, events)
	a, err := appliance.NewAppliance(appliance.ApplianceConfig{
		Self:        self,
		Codec:       sourceroute.Codec{EtherType: cfg.etherType, MaxHops: cfg.maxHops},
		Transport:   tr,
		Inspector:   f,
		NotifyDrops: cfg.notify,
		Logger:      log,
	})
	if err != nil {
		return err
	}

	out := json.NewEncoder(stdout)
	if err := out.Encode(readyLine{
		Type: "ready", Version: version.Version, Config: source, Interface: cfg.iface, Self: self.String(),
		EtherType: fmt.Sprintf("%#04x", cfg.etherType), Promiscuous: promisc, MTU: tr.MTU(),
		Rules: len(cfg.rules), Signatures: len(cfg.signatures), AutomatonStates: f.automatonStates(),
	}); err != nil {
		return fmt.Errorf("writing to stdout: %w", err)
	}
	log.Info("vsafilter serving", "interface", cfg.iface, "self", self, "rules", len(cfg.rules), "signatures", len(cfg.signatures))

	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	var tick <-chan time.Time
	if cfg.statsInterval > 0 {
		t := time.NewTicker(cfg.statsInterval)
		defer t.Stop()
		tick = t.C
	}
	report := func(reason string) error {
		return out.Encode(newCountersLine(reason, cfg.iface, self, a.Counters(), f.stats()))
	}
	for {
		select {
		case <-tick:
			err = report("interval")
		case <-usr1:
			err = report("signal")
		case err = <-runErr:
			if err == nil {
				err = report("exit")
			} else {
				_ = report("exit")
			}
			return err
		}
		if err != nil {
			// Nobody reads the counters any more; keep forwarding.
			log.Warn("writing counters failed", "err", err)
		}
	}
}

// interfacePoll is how often a missing interface is looked for again.
const interfacePoll = 100 * time.Millisecond

// waitForInterface returns the interface once it exists, waiting up to
// wait for a driver that is still loading.
func waitForInterface(ctx context.Context, name string, wait time.Duration) (*net.Interface, error) {
	deadline := time.Now().Add(wait)
	for {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			return ifi, nil
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("interface %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(interfacePoll):
		}
	}
}

type readyLine struct {
	Type            string `json:"type"`
	Version         string `json:"version"`
	Config          string `json:"config"`
	Interface       string `json:"interface"`
	Self            string `json:"self"`
	EtherType       string `json:"ethertype"`
	Promiscuous     bool   `json:"promiscuous"`
	MTU             int    `json:"mtu"`
	Rules           int    `json:"rules"`
	Signatures      int    `json:"signatures"`
	AutomatonStates int    `json:"automaton_states"`
}

// applianceStats is appliance.Counters as it appears in the JSON counters.
type applianceStats struct {
	Received     uint64            `json:"received"`
	Ignored      uint64            `json:"ignored"`
	Forwarded    uint64            `json:"forwarded"`
	Rewritten    uint64            `json:"rewritten"`
	Dropped      uint64            `json:"dropped"`
	Invalid      map[string]uint64 `json:"invalid"`
	SendErrors   uint64            `json:"send_errors"`
	NoticesSent  uint64            `json:"notices_sent"`
	NoticeErrors uint64            `json:"notice_errors"`
	RecvErrors   uint64            `json:"recv_errors"`
}

type countersLine struct {
	Type      string         `json:"type"`
	Reason    string         `json:"reason"`
	Time      time.Time      `json:"time"`
	Interface string         `json:"interface"`
	Self      string         `json:"self"`
	Appliance applianceStats `json:"appliance"`
	Filter    filterStats    `json:"filter"`
}

func newCountersLine(reason, iface string, self sourceroute.MAC, c appliance.Counters, fs filterStats) countersLine {
	return countersLine{
		Type: "counters", Reason: reason, Time: time.Now().UTC(), Interface: iface, Self: self.String(),
		Appliance: applianceStats{
			Received: c.Received, Ignored: c.Ignored, Forwarded: c.Forwarded, Rewritten: c.Rewritten,
			Dropped: c.Dropped, Invalid: c.InvalidByReason(), SendErrors: c.SendErrors,
			NoticesSent: c.NoticesSent, NoticeErrors: c.NoticeErrors, RecvErrors: c.RecvErrors,
		},
		Filter: fs,
	}
}
