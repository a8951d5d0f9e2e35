package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vsagent/vsagent/agent"
	"github.com/vsagent/vsagent/hypervisor"
	"github.com/vsagent/vsagent/internal/api"
	"github.com/vsagent/vsagent/internal/api/agentapi"
	"github.com/vsagent/vsagent/internal/config"
	"github.com/vsagent/vsagent/internal/metrics"
	"github.com/vsagent/vsagent/internal/version"
	"github.com/vsagent/vsagent/sourceroute"
	"github.com/vsagent/vsagent/systemd"
)

// runDaemon is `vsagent run`: the long-running agent that systemd starts.
func runDaemon(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("vsagent run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", config.DefaultPath, "configuration file")
	uri := fs.String("libvirt-uri", "", "override [agent] libvirt_uri")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "vsagent: configuration %s is invalid:\n%v\n", *cfgPath, err)
		return 1
	}
	if *uri != "" {
		cfg.Agent.LibvirtURI = *uri
	}
	log := systemd.NewLogger(logLevel(cfg.Agent.LogLevel), stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d := &daemon{cfgPath: *cfgPath, log: log, notify: systemd.NewNotifier()}
	if err := d.run(ctx, cfg); err != nil {
		log.Error("vsagent stopped with an error", "error", err)
		return 1
	}
	return 0
}

type daemon struct {
	cfgPath   string
	log       *slog.Logger
	notify    *systemd.Notifier
	heartbeat systemd.Heartbeat
	metrics   *metrics.Metrics
}

// startDataplane creates the distribution manager's intercept link, the
// configured intercept backend and the forwarding engine, and runs the
// engine until ctx ends.
func (d *daemon) startDataplane(ctx context.Context, cfg *config.Config, hv *hypervisor.Conn, onEvent func(sourceroute.Event)) (*agent.DistributionManager, error) {
	hostID, err := hv.HostUUID(ctx)
	if err != nil {
		return nil, fmt.Errorf("host UUID for the dataplane: %w", err)
	}
	dm, err := agent.NewHostDataplane(cfg, hv, hostID, "", d.log, onEvent)
	if err != nil {
		return nil, err
	}
	go func() {
		if err := dm.Run(ctx); err != nil {
			d.log.Error("distribution manager stopped", "error", err)
		}
	}()
	d.log.Info("distribution manager running", "port", cfg.Dataplane.Port, "backend", cfg.Intercept.Backend)
	return dm, nil
}

// serveOperators starts the root-only control socket (vsactl) and, when
// configured, the Prometheus endpoint.
func (d *daemon) serveOperators(ctx context.Context, cfg *config.Config, ag *agent.Agent, hv *hypervisor.Conn, dp dataplaneOps, loads metrics.Loads) error {
	cpu := agentapi.NewCPUSampler(hv, ag.Appliances, cfg.Scaling.PollInterval, d.log)
	go cpu.Run(ctx)
	prov := agentapi.New(agentapi.Sources{Agent: ag, Libvirt: hv, Flows: dp, Utilisation: cpu, Version: version.Version, StartedAt: time.Now()})
	ln, err := api.Listen(ctx, cfg.Agent.Socket)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	go func() {
		if err := api.NewServer(prov, api.ServerOptions{Logger: d.log}).Serve(ctx, ln); err != nil {
			d.log.Error("control API stopped", "error", err)
		}
	}()
	d.metrics = metrics.New(metrics.Sources{Agent: ag, Libvirt: hv, Dataplane: dp, Utilisation: cpu, Loads: loads, Version: version.Version})
	go d.metrics.FollowEvents(ctx, ag)
	if cfg.Metrics.Listen == "" {
		return nil
	}
	mln, err := metrics.Listen(ctx, cfg.Metrics.Listen)
	if err != nil {
		return fmt.Errorf("metrics endpoint: %w", err)
	}
	go func() {
		if err := d.metrics.Serve(ctx, mln, d.log); err != nil {
			d.log.Error("metrics endpoint stopped", "error", err)
		}
	}()
	d.log.Info("metrics endpoint listening", "address", mln.Addr().String())
	return nil
}

func (d *daemon) run(ctx context.Context, cfg *config.Config) error {
	d.log.Info("vsagent starting", "version", version.Version, "config", d.cfgPath, "summary", cfg.Summary())
	go d.notify.RunWatchdog(ctx, d.heartbeat.Alive)

	d.status("connecting to libvirt at %s", cfg.Agent.LibvirtURI)
	hv, err := connectLibvirt(ctx, cfg.Agent.LibvirtURI, d.log, d.heartbeat.Beat, d.status)
	if err != nil {
		return err
	}
	defer hv.Close()

	var ag *agent.Agent
	dm, err := d.startDataplane(ctx, cfg, hv, func(e sourceroute.Event) { ag.RecordDataplaneEvent(e) })
	if err != nil {
		return err
	}
	ag = agent.New(hv, cfg, agent.Options{Logger: d.log, Heartbeat: d.heartbeat.Beat, Dataplane: dm})
	runErr := make(chan error, 1)
	go func() { runErr <- ag.Run(ctx) }()
	scaler := agent.NewAutoscaler(ag, agent.AutoscalerOptions{Hypervisor: hv, Drainer: dm, Health: dm})
	go func() {
		if err := scaler.Run(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("autoscaler stopped", "error", err)
		}
	}()
	// The control socket and metrics come up before the first resync ends,
	// so `vsactl status` can say "starting" on a host with many domains.
	if err := d.serveOperators(ctx, cfg, ag, hv, dataplaneOps{dm.Engine()}, scaler); err != nil {
		return err
	}
	if err := d.serveHook(ctx, cfg, ag); err != nil {
		return err
	}

	d.status("resyncing every domain with libvirt")
	select {
	case <-ag.Ready():
		d.log.Info("first resync complete: ready", "guests", len(ag.Guests()), "appliances", len(ag.Appliances()))
		if err := d.notify.Ready(); err != nil {
			d.log.Warn("cannot tell systemd we are ready", "error", err)
		}
		d.status("%s", summary(ag))
	case err := <-runErr:
		return err
	case <-ctx.Done():
		return <-runErr
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-hup:
			d.reload(ag)
		case <-tick.C:
			d.status("%s", summary(ag))
		case err := <-runErr:
			return err
		case <-ctx.Done():
			// Guests' wiring is left as it is: interception stays in place,
			// fail closed, until the next start resyncs.
			_ = d.notify.Stopping()
			d.log.Info("stopping; guests' interception is left in place")
			return <-runErr
		}
	}
}

// reload applies a valid new configuration live and keeps the old one,
// with every error logged, when the new one is invalid.
func (d *daemon) reload(ag *agent.Agent) {
	_ = d.notify.Reloading()
	defer func() { _ = d.notify.Ready() }()
	cfg, err := config.Load(d.cfgPath)
	d.metrics.RecordConfigReload(err)
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				d.log.Error("reload refused: configuration error; the running configuration stays in force", "error", e.Error())
			}
		} else {
			d.log.Error("reload refused; the running configuration stays in force", "error", err)
		}
		return
	}
	// The libvirt connection is not reopened on reload: a changed URI
	// needs a restart, and saying so beats silently ignoring it.
	if old := ag.Config().Agent.LibvirtURI; cfg.Agent.LibvirtURI != old {
		d.log.Warn("libvirt_uri changed; it takes effect at the next restart", "running", old, "configured", cfg.Agent.LibvirtURI)
		cfg.Agent.LibvirtURI = old
	}
	ag.SetConfig(cfg)
}

func (d *daemon) status(format string, args ...any) {
	_ = d.notify.Status(format, args...)
}

// connectLibvirt retries until libvirtd answers or ctx ends: on boot the
// agent may start before libvirtd is listening.
func connectLibvirt(ctx context.Context, uri string, log *slog.Logger, beat func(), status func(string, ...any)) (*hypervisor.Conn, error) {
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		beat()
		hv, err := hypervisor.Connect(ctx, uri, hypervisor.Options{Logger: log})
		if err == nil {
			return hv, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to libvirt at %s: %w", uri, err)
		}
		log.Warn("cannot connect to libvirt; retrying", "uri", uri, "attempt", attempt, "retry_in", delay, "error", err)
		status("waiting for libvirt at %s (attempt %d): %v", uri, attempt, err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to libvirt at %s: %w", uri, err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 15*time.Second)
	}
}

func summary(ag *agent.Agent) string {
	counts := map[agent.GuestState]int{}
	for _, g := range ag.Guests() {
		counts[g.State]++
	}
	return fmt.Sprintf("%d guests inspected, %d gated, %d unmanaged; %d appliances",
		counts[agent.GuestInspected], counts[agent.GuestGated], counts[agent.GuestUnmanaged], len(ag.Appliances()))
}

func logLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}
