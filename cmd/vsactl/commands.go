package main

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/vsagent/vsagent/internal/api"
)

func (c *cli) status(ctx context.Context, _ []string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	st, err := c.client.Status(ctx)
	if err != nil {
		return err
	}
	if c.opts.json {
		return c.printJSON(st)
	}
	return c.renderStatus(st)
}

func (c *cli) guests(ctx context.Context, _ []string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	gs, err := c.client.Guests(ctx)
	if err != nil {
		return err
	}
	if c.opts.json {
		return c.printJSON(api.GuestList{Guests: gs})
	}
	return c.renderGuests(gs)
}

func (c *cli) appliances(ctx context.Context, _ []string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	as, err := c.client.Appliances(ctx)
	if err != nil {
		return err
	}
	if c.opts.json {
		return c.printJSON(api.ApplianceList{Appliances: as})
	}
	return c.renderAppliances(as)
}

func (c *cli) flows(ctx context.Context, _ []string) error {
	ctx, cancel := c.call(ctx)
	defer cancel()
	fl, err := c.client.Flows(ctx, c.opts.guest)
	if err != nil {
		return err
	}
	if c.opts.json {
		return c.printJSON(fl)
	}
	return c.renderFlows(fl)
}

func (c *cli) events(ctx context.Context, _ []string) error {
	if c.opts.follow {
		return c.followEvents(ctx)
	}
	ctx, cancel := c.call(ctx)
	defer cancel()
	evs, err := c.client.Events(ctx, c.opts.after)
	if err != nil {
		return err
	}
	if c.opts.json {
		return c.printJSON(api.EventList{Events: evs})
	}
	return c.renderEvents(evs)
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
	ctx, cancel := c.call(ctx)
	defer cancel()
	e, err := c.client.Explain(ctx, args[0])
	if err != nil {
		return err
	}
	if c.opts.json {
		return c.printJSON(e)
	}
	return c.renderExplanation(e)
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
