//go:build !linux

package sourceroute

func adviseHugePages([]slot) {}
