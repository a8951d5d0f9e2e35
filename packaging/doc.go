// Package packaging builds vsagent's .deb and .rpm and tests them.
//
// nfpm.yaml says what the packages hold; scripts/ has the maintainer
// scripts of each format; etc/vsagent.toml is the inert configuration they
// install. Build compiles the programs with the version embedded, generates
// man pages from the programs' help and vsactl's shell completions, and runs
// the pinned nfpm. The tests pin each package's contents in manifests,
// install, upgrade, remove and purge the .deb in a Debian 12 root, and check
// the .rpm's files and scriptlets. See docs/packaging.md.
package packaging
