package main

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/vsagent/vsagent/internal/api"
)

// show fetches one answer within --timeout and prints it: with --json as
// the API's own object (asJSON restores the wrapping the client unwrapped),
// otherwise as a table.
func show[T any](ctx context.Context, c *cli, fetch func(context.Context) (T, error), asJSON func(T) any, render func(T) error) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	v, err := fetch(ctx)
	if err != nil {
		return err
	}
	if c.opts.json {
		return c.printJSON(asJSON(v))
	}
	return render(v)
}

func asIs[T any](v T) any { return v }

func (c *cli) status(ctx context.Context, _ []string) error {
	return show(ctx, c, c.client.Status, asIs, c.renderStatus)
}

func (c *cli) guests(ctx context.Context, _ []string) error {
	return show(ctx, c, c.client.Guests, func(gs []api.Guest) any { return api.GuestList{Guests: gs} }, c.renderGuests)
}

func (c *cli) appliances(ctx context.Context, _ []string) error {
	return show(ctx, c, c.client.Appliances, func(as []api.Appliance) any { return api.ApplianceList{Appliances: as} }, c.renderAppliances)
}

func (c *cli) flows(ctx context.Context, _ []string) error {
	fetch := func(ctx context.Context) (api.FlowList, error) { return c.client.Flows(ctx, c.opts.guest) }
	return show(ctx, c, fetch, asIs, c.renderFlows)
}

func (c *cli) events(ctx context.Context, _ []string) error {
	if c.opts.follow {
		return c.followEvents(ctx)
	}
	fetch := func(ctx context.Context) ([]api.Event, error) { return c.client.Events(ctx, c.opts.after) }
	return show(ctx, c, fetch, func(evs []api.Event) any { return api.EventList{Events: evs} }, c.renderEvents)
}

// followEvents prints events as JSON lines or table rows as they come,
// until interrupted (exit 0) or the agent goes away (exit 3). Only the
// connection is bounded by --timeout; the stream is not.
func (c *cli) followEvents(ctx context.Context) error {
	header := !c.opts.json
	err := c.client.FollowEvents(ctx, c.opts.after, func(e api.Event) error {
		if c.opts.json {
			return c.printEventLine(e)
		}
		if header {
			c.printEventHeader()
			header = false
		}
		return c.printEventRow(e)
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (c *cli) explain(ctx context.Context, args []string) error {
	fetch := func(ctx context.Context) (api.Explanation, error) { return c.client.Explain(ctx, args[0]) }
	return show(ctx, c, fetch, asIs, c.renderExplanation)
}

// names prints one name per line for the shell completions. It fails
// quietly: a completion must never spill errors into the command line.
func (c *cli) names(ctx context.Context, args []string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	var names []string
	switch args[0] {
	case "guests", "domains":
		gs, err := c.client.Guests(ctx)
		if err != nil {
			return errQuiet
		}
		for _, g := range gs {
			names = append(names, g.Name)
		}
		if args[0] == "domains" {
			as, err := c.client.Appliances(ctx)
			if err != nil {
				return errQuiet
			}
			for _, a := range as {
				names = append(names, a.Name)
			}
		}
	default:
		return usagef(nil, "__names: want guests or domains, not %q", args[0])
	}
	slices.Sort(names)
	for _, n := range slices.Compact(names) {
		fmt.Fprintln(c.stdout, n)
	}
	return nil
}

// errQuiet fails without a message.
var errQuiet = errors.New("")
