package hypervisor

import (
	"context"

	"libvirt.org/go/libvirt"
)

const (
	// BindingNamespace holds the user-set policy binding of a guest:
	// <binding policy="NAME"/>. It travels with the guest on migration.
	BindingNamespace = "https://vsagent.dev/xmlns/binding/1"
	// StateNamespace holds what vsagent itself records: the gate on guests it
	// paused, ownership on the appliances it defined.
	StateNamespace = "https://vsagent.dev/xmlns/state/1"
	// MetadataKey is the XML prefix libvirt writes for both namespaces; each
	// element declares its own namespace, so one prefix serves both.
	MetadataKey = "vsagent"
)

// Metadata returns the metadata element of the given namespace, without its
// prefix (for example `<binding policy="web"/>`), from the live definition
// of a running domain or the persistent one of an inactive domain. An unset
// element yields ErrNoMetadata.
func (c *Conn) Metadata(ctx context.Context, uuid, namespace string) (string, error) {
	var out string
	err := c.withDomain(ctx, "get metadata "+namespace, uuid, func(d *libvirt.Domain) error {
		var err error
		out, err = d.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, namespace, libvirt.DOMAIN_AFFECT_CURRENT)
		return err
	})
	return out, err
}

// SetMetadata stores xml (one element, unprefixed) under namespace in the
// running domain, if it runs, and in its persistent definition, if it has
// one, so the value survives both a restart of the domain and a migration.
// An empty xml removes the element; removing an absent element succeeds.
func (c *Conn) SetMetadata(ctx context.Context, uuid, namespace, xml string) error {
	key := MetadataKey
	if xml == "" {
		key = ""
	}
	return c.withDomain(ctx, "set metadata "+namespace, uuid, func(d *libvirt.Domain) error {
		return applyLiveAndConfig(d, libvirt.DOMAIN_AFFECT_LIVE, libvirt.DOMAIN_AFFECT_CONFIG, func(flags libvirt.DomainModificationImpact) error {
			return d.SetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, xml, key, namespace, flags)
		})
	})
}
