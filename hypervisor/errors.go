package hypervisor

import (
	"errors"
	"fmt"

	"libvirt.org/go/libvirt"
)

var (
	// ErrNotFound reports that the domain does not exist (VIR_ERR_NO_DOMAIN).
	ErrNotFound = errors.New("domain not found")
	// ErrNoMetadata reports that the domain carries no metadata element in the
	// requested namespace (VIR_ERR_NO_DOMAIN_METADATA).
	ErrNoMetadata = errors.New("no metadata in that namespace")
	// ErrDisconnected reports that there is no usable libvirt connection right
	// now; the Conn is reconnecting in the background and will emit
	// EventResync once it is back.
	ErrDisconnected = errors.New("not connected to libvirt")
	// ErrClosed reports an operation on a Conn after Close.
	ErrClosed = errors.New("connection closed")
	// ErrNotRunning reports an operation that needs an active domain (suspend,
	// resume, live changes) on one that is shut off.
	ErrNotRunning = errors.New("domain is not running")
	// ErrNoHostUUID reports that neither the capabilities nor the sysinfo of
	// the hypervisor name a host UUID.
	ErrNoHostUUID = errors.New("hypervisor reports no host UUID")
)

// libvirtCode returns the libvirt error code carried by err, if any.
func libvirtCode(err error) (libvirt.ErrorNumber, bool) {
	var lerr libvirt.Error
	if errors.As(err, &lerr) {
		return lerr.Code, true
	}
	return 0, false
}

func hasCode(err error, codes ...libvirt.ErrorNumber) bool {
	code, ok := libvirtCode(err)
	if !ok {
		return false
	}
	for _, c := range codes {
		if code == c {
			return true
		}
	}
	return false
}

// classify attaches the matching sentinel to a libvirt error while keeping
// the original reachable, so callers can use errors.Is with our sentinels and
// errors.As with libvirt.Error on the same value.
func classify(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrNoMetadata), errors.Is(err, ErrDisconnected):
		return err
	case hasCode(err, libvirt.ERR_NO_DOMAIN):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case hasCode(err, libvirt.ERR_NO_DOMAIN_METADATA):
		return fmt.Errorf("%w: %w", ErrNoMetadata, err)
	case hasCode(err, libvirt.ERR_INVALID_CONN, libvirt.ERR_NO_CONNECT):
		return fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	return err
}

// flagsRejected reports whether the driver refused an operation because of
// the flags it was given rather than because of the domain's state: such a
// call is worth retrying with simpler flags.
func flagsRejected(err error) bool {
	return hasCode(err, libvirt.ERR_INVALID_ARG, libvirt.ERR_NO_SUPPORT, libvirt.ERR_ARGUMENT_UNSUPPORTED)
}
