package version

// Version is overridden at link time from the VERSION file or a git tag.
var Version = "0.0.0-dev"
