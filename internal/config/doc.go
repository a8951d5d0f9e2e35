// Package config loads, validates and describes vsagent's configuration: the
// main TOML file (agent, dataplane, intercept, metrics and scaling settings,
// the appliance catalogue and the policies) and the conf.d/*.toml files
// beside it, which may only add appliances and policies.
//
// Decoding is strict and exhaustive. Unknown keys, wrong types, unreadable or
// invalid appliance templates, dangling chain references, duplicates and
// out-of-range values are all collected, each with the file and line that
// declared it, so an operator fixes a file in one pass instead of one error
// per reload. The result is either a complete, validated [Config] or an
// [Errors] value; never a half-valid configuration.
//
// The line of every key is found by a small scanner over the already parsed
// document, because the TOML library exposes positions only for syntax
// errors and, for arrays of tables, keeps one position per key name rather
// than one per element.
//
// An embedded demonstration configuration is available through [Default].
package config
