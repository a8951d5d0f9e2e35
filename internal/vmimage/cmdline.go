package vmimage

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// MaxCmdline is the longest kernel command line x86 kernels accept
// (COMMAND_LINE_SIZE 2048, including the terminating NUL); the kernel cuts
// a longer one silently, which would leave vsafilter with half its rules.
const MaxCmdline = 2047

// BaseCmdline starts every appliance's kernel command line: the console on
// the serial port the templates log, few kernel messages, and an immediate
// reboot on panic, which the templates' on_reboot=destroy turns into a
// stopped domain instead of a hung one.
const BaseCmdline = "console=ttyS0 quiet panic=-1"

// ErrCmdline is wrapped by every error of Cmdline.
var ErrCmdline = errors.New("vmimage: bad appliance command line")

// CmdlineOptions configure the vsafilter of an appliance through its kernel
// command line (docs/vsafilter.md, "Kernel command line").
type CmdlineOptions struct {
	// Interface vsafilter serves; default eth0.
	Interface string
	// Rules is a whole vsafilter TOML configuration, baked into the command
	// line as base64 so that every instance of the appliance runs the same
	// rules. It costs 4/3 of its size of the 2 KiB command line; larger
	// configurations go on a config disk.
	Rules []byte
	// ConfigDisk is the device inside the VM holding the configuration (see
	// WriteConfigDisk), e.g. /dev/vda; it excludes Rules.
	ConfigDisk string
	// StatsInterval between counters lines on the console; 0 keeps
	// vsafilter's default (10s).
	StatsInterval time.Duration
	// EtherType of the MSR header; 0 keeps the default 0x88B5.
	EtherType uint16
	// LogLevel of vsafilter: debug, info, warn or error; "" keeps info.
	LogLevel string
}

// Cmdline returns the kernel command line of an appliance: BaseCmdline
// followed by vsafilter.* parameters in a fixed order.
func Cmdline(o CmdlineOptions) (string, error) {
	iface := o.Interface
	if iface == "" {
		iface = "eth0"
	}
	if len(iface) > 15 || strings.ContainsAny(iface, "/ \t\n\"=") {
		return "", fmt.Errorf("%w: %q is not an interface name", ErrCmdline, iface)
	}
	params := []string{BaseCmdline, "vsafilter.iface=" + iface}
	if o.EtherType != 0 {
		if o.EtherType < 0x0600 || o.EtherType == 0x88B6 {
			return "", fmt.Errorf("%w: EtherType %#04x is a length or the drop-notice type", ErrCmdline, o.EtherType)
		}
		params = append(params, fmt.Sprintf("vsafilter.ethertype=%#04x", o.EtherType))
	}
	if o.StatsInterval < 0 {
		return "", fmt.Errorf("%w: negative stats interval", ErrCmdline)
	}
	if o.StatsInterval > 0 {
		params = append(params, "vsafilter.stats="+o.StatsInterval.String())
	}
	switch o.LogLevel {
	case "":
	case "debug", "info", "warn", "error":
		params = append(params, "vsafilter.log="+o.LogLevel)
	default:
		return "", fmt.Errorf("%w: log level %q is not debug, info, warn or error", ErrCmdline, o.LogLevel)
	}
	switch {
	case len(o.Rules) > 0 && o.ConfigDisk != "":
		return "", fmt.Errorf("%w: rules and a config disk exclude each other", ErrCmdline)
	case len(o.Rules) > 0:
		if bytes.IndexByte(o.Rules, 0) >= 0 {
			return "", fmt.Errorf("%w: rules contain a NUL byte (not TOML)", ErrCmdline)
		}
		params = append(params, "vsafilter.rules="+base64.StdEncoding.EncodeToString(o.Rules))
	case o.ConfigDisk != "":
		if !strings.HasPrefix(o.ConfigDisk, "/dev/") || strings.ContainsAny(o.ConfigDisk, " \t\n\"") {
			return "", fmt.Errorf("%w: config disk %q is not a /dev path", ErrCmdline, o.ConfigDisk)
		}
		params = append(params, "vsafilter.config="+o.ConfigDisk)
	}
	line := strings.Join(params, " ")
	if len(line) > MaxCmdline {
		return "", fmt.Errorf("%w: %d bytes, the kernel takes %d: put the rules on a config disk", ErrCmdline, len(line), MaxCmdline)
	}
	return line, nil
}

// configDiskBlock is the size a config disk is padded to: virtio-blk shows
// whole sectors only, and the kernel's partition scan reads the first 16
// sectors (an Amiga RDB) and complains on the console about a disk that
// ends before them; 64 KiB settles both.
const configDiskBlock = 64 << 10

// maxConfigDisk is the most vsafilter reads from a config source.
const maxConfigDisk = 4 << 20

// WriteConfigDisk writes a raw disk image holding a vsafilter TOML
// configuration, zero-padded to whole 64 KiB blocks (vsafilter stops reading
// at the first NUL). Attach it read-only as a virtio disk and point
// CmdlineOptions.ConfigDisk at it. The file is replaced atomically.
func WriteConfigDisk(path string, config []byte) error {
	if len(config) == 0 {
		return errors.New("vmimage: empty configuration")
	}
	if bytes.IndexByte(config, 0) >= 0 {
		return errors.New("vmimage: configuration contains a NUL byte (not TOML)")
	}
	if len(config) > maxConfigDisk {
		return fmt.Errorf("vmimage: configuration of %d bytes is larger than vsafilter reads (%d)", len(config), maxConfigDisk)
	}
	size := (len(config) + configDiskBlock) / configDiskBlock * configDiskBlock
	disk := make([]byte, size)
	copy(disk, config)
	return writeAtomic(path, func(w io.Writer) error {
		_, err := w.Write(disk)
		return err
	})
}
