package config

import (
	"embed"
	"io/fs"
)

//go:embed default/vsagent.toml default/templates/*.xml
var defaultFiles embed.FS

// DefaultFS is the embedded demonstration configuration: vsagent.toml and
// the appliance templates it names, under templates/.
func DefaultFS() fs.FS {
	sub, err := fs.Sub(defaultFiles, "default")
	if err != nil {
		panic(err) // "default" is a constant, valid path
	}
	return sub
}

// Default returns the embedded demonstration configuration: appliances
// "ips" and "fw" and a policy "protected" that chains them for domains
// named "demo-*". It is validated by the package's tests, so a failure here
// is a build defect and panics.
func Default() *Config {
	cfg, err := ParseFS(DefaultFS(), "vsagent.toml")
	if err != nil {
		panic("config: the embedded default configuration is invalid:\n" + err.Error())
	}
	return cfg
}
