package e2elab

import (
	"context"
	"strconv"
	"strings"
)

// EICAR is the standard antivirus test string; FWRules drop it.
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// Console markers of TrafficScript, one line each, in this order.
const (
	MarkHTTP   = "e2e: http "   // "ok NAME after N retries" or "failed"
	MarkEcho   = "e2e: echo "   // the echo server's reply
	MarkClosed = "e2e: port24 " // nc's exit status and message for a closed port
	MarkTelnet = "e2e: telnet " // the same for port 23, which ips denies
	MarkAttack = "e2e: attack " // how many bytes of the EICAR line came back
	MarkBulk   = "e2e: bulk "   // how many of BulkBytes random bytes came back
	MarkDone   = "e2e: done"
)

// BulkBytes is how much the script streams through the echo port: enough
// for the connection's frames to go to the distribution manager's kernel
// fast path once it has seen their first ones.
const BulkBytes = 200000

// EchoText is what the script sends to the peer's echo port.
const EchoText = "hello-through-the-chain"

// TrafficScript is a guest script (libvirtlab.GuestRun) that talks to the
// guest at peer and prints each outcome on the console. Every step is
// bounded: HTTP (with nc: the static busybox's wget crashes) is retried once a second for at most 90 s (the peer and
// the appliances may still be booting), each later step gives up after
// 8 s. With full false it stops after HTTP.
//
//   - HTTP to :80 must return the peer's name;
//   - a line to the echo port :7 must come back;
//   - port 24 is closed on the peer and not denied: "Connection refused"
//     proves that a reset finds its way back through the chain, which
//     makes the next step meaningful;
//   - port 23 (telnet) is denied by ips: no reset, nc times out;
//   - the EICAR line to the echo port is dropped by fw: nothing comes back;
//   - BulkBytes random bytes to the echo port all come back (the
//     connection is long enough for the fast path to take it over).
func TrafficScript(peer string, full bool) string {
	s := `p=PEER
n=0
get() { printf 'GET / HTTP/1.0\r\n\r\n' | timeout 5 nc -w 2 $p 80 >/tmp/h 2>&1; grep -q ' 200 ' /tmp/h; }
until get; do n=$((n+1)); [ $n -ge 90 ] && break; sleep 1; done
if get; then echo "e2e: http ok $(tail -n 1 /tmp/h) after $n retries"; else echo "e2e: http failed: $(head -n 1 /tmp/h)"; fi
`
	if full {
		s += `r=$(echo ` + EchoText + ` | timeout 8 nc -w 3 $p 7); echo "e2e: echo $r"
timeout 8 nc -w 4 $p 24 </dev/null 2>/tmp/e; echo "e2e: port24 rc=$? $(cat /tmp/e)"
timeout 8 nc -w 4 $p 23 </dev/null 2>/tmp/e; echo "e2e: telnet rc=$? $(cat /tmp/e)"
r=$(printf '%s\n' 'EICARLINE' | timeout 8 nc -w 3 $p 7); echo "e2e: attack echoed ${#r} bytes"
r=$(head -c BULK /dev/urandom | timeout 60 nc -w 5 $p 7 | wc -c); echo "e2e: bulk echoed $r bytes"
`
		s = strings.Replace(s, "EICARLINE", EICAR, 1)
		s = strings.Replace(s, "BULK", strconv.Itoa(BulkBytes), 1)
	}
	s += "echo \"" + MarkDone + "\"\n"
	return strings.Replace(s, "PEER", peer, 1)
}

// Outcome is what a guest's TrafficScript reported, line by line.
type Outcome struct {
	Lines map[string]string // by Mark*, the whole console line
}

// Passed reports whether the step of mark ended as the policy wants:
// allowed traffic answered, denied traffic unanswered.
func (o Outcome) Passed(mark string) bool {
	line := o.Lines[mark]
	switch mark {
	case MarkHTTP:
		return strings.Contains(line, MarkHTTP+"ok ")
	case MarkEcho:
		return strings.Contains(line, EchoText)
	case MarkClosed:
		return strings.Contains(line, "refused")
	case MarkTelnet:
		return line != "" && !strings.Contains(line, "refused")
	case MarkAttack:
		return strings.Contains(line, "echoed 0 bytes")
	case MarkBulk:
		return strings.Contains(line, "echoed "+strconv.Itoa(BulkBytes)+" bytes")
	}
	return false
}

// Outcome waits for marks on the guest's console, in order, calling each
// (if not nil) as its line appears, and returns them all.
func (g *Guest) Outcome(ctx context.Context, each func(mark, line string), marks ...string) (Outcome, error) {
	o := Outcome{Lines: map[string]string{}}
	for _, m := range marks {
		line, err := g.ConsoleLine(ctx, m)
		if err != nil {
			return o, err
		}
		o.Lines[m] = line
		if each != nil {
			each(m, line)
		}
	}
	return o, nil
}

// AllMarks are TrafficScript's marks with full traffic, in order.
var AllMarks = []string{MarkHTTP, MarkEcho, MarkClosed, MarkTelnet, MarkAttack, MarkBulk}
