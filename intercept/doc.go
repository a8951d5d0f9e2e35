// Package intercept diverts a guest's frames to the distribution manager and
// reverts the diversion exactly to the prior wiring. Backends (tc-redirect,
// macvtap, switchdev, sriov-vlan) share one small interface.
//
// It changes only the interfaces it is asked to and records what it found
// before so that revert restores it; it decides nothing about policy.
package intercept
