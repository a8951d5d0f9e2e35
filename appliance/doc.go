// Package appliance owns the virtual security appliance (VSA) catalogue:
// templates, instance naming and ownership, MAC allocation and scaling
// decisions (all pure), and the VSA-side library that header-aware
// appliances use to receive, inspect and forward MSR frames.
//
// The pure parts import nothing else of vsagent's; the VSA-side library uses
// only sourceroute's codec.
package appliance
