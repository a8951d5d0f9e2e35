// Package testdata holds shared test inputs: configurations, domain
// templates, fake sysfs trees and captured frames. It has no code of its own
// beyond helpers that locate these files.
package testdata
