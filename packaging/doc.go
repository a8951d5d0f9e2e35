// Package packaging holds the nfpm configuration and maintainer scripts that
// build vsagent's .deb and .rpm packages, and the tests that inspect them.
package packaging
