package sourceroute

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// Test vectors are copies of the shared testvectors/*.json of SOURCE-ROUTE.md.

type chainVectors struct {
	Original     []byte
	ToVSA1       []byte
	VSA1ToVSA2   []byte
	VSA2ToDM     []byte
	HeaderLength int
}

var (
	vsa1 = MAC{0x02, 0, 0, 0, 0x10, 0x01}
	vsa2 = MAC{0x02, 0, 0, 0, 0x10, 0x02}
	dm   = MAC{0x02, 0, 0, 0, 0x0d, 0x01}
)

func readVectorFile(tb testing.TB, name string) map[string]json.RawMessage {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	return m
}

func hexField(tb testing.TB, m map[string]json.RawMessage, key string) []byte {
	tb.Helper()
	raw, ok := m[key]
	if !ok {
		tb.Fatalf("vector %q missing", key)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		tb.Fatalf("vector %q: %v", key, err)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		tb.Fatalf("vector %q: %v", key, err)
	}
	return b
}

func loadChainVectors(tb testing.TB) chainVectors {
	tb.Helper()
	m := readVectorFile(tb, "two-vsa-chain.json")
	var v chainVectors
	v.Original = hexField(tb, m, "original_frame")
	v.ToVSA1 = hexField(tb, m, "dm_encapsulated_to_vsa1")
	v.VSA1ToVSA2 = hexField(tb, m, "vsa1_forwarded_to_vsa2")
	v.VSA2ToDM = hexField(tb, m, "vsa2_forwarded_to_dm")
	if err := json.Unmarshal(m["header_length_bytes"], &v.HeaderLength); err != nil {
		tb.Fatalf("header_length_bytes: %v", err)
	}
	return v
}

// loadInvalidVectors returns the invalid frames sorted by key, so failures
// and fuzz seeds are reproducible.
func loadInvalidVectors(tb testing.TB) (keys []string, frames map[string][]byte) {
	tb.Helper()
	m := readVectorFile(tb, "invalid-frames.json")
	frames = make(map[string][]byte, len(m))
	for k := range m {
		keys = append(keys, k)
		frames[k] = hexField(tb, m, k)
	}
	sort.Strings(keys)
	return keys, frames
}

// allVectorFrames lists every frame of both vector files.
func allVectorFrames(tb testing.TB) [][]byte {
	v := loadChainVectors(tb)
	out := [][]byte{v.Original, v.ToVSA1, v.VSA1ToVSA2, v.VSA2ToDM}
	keys, frames := loadInvalidVectors(tb)
	for _, k := range keys {
		out = append(out, frames[k])
	}
	return out
}
