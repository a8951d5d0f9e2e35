// Package version carries the build's version string, set by the linker.
package version
