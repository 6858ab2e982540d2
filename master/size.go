package master

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize parses a memory size for Options.MaxMemory: a number of bytes
// with an optional unit K, M, G or T, each a power of 1024 as in systemd's
// MemoryMax= ("48M", "512MiB" and "512M" are the same, "1G", "1.5G",
// "65536"). A trailing "iB" or "B" after the unit is allowed. The result
// must be positive and fit in an int64.
func ParseSize(s string) (int64, error) {
	num := strings.TrimSpace(s)
	if num == "" {
		return 0, fmt.Errorf("size %q: empty", s)
	}
	upper := strings.ToUpper(num)
	for _, suf := range []string{"IB", "B"} {
		if strings.HasSuffix(upper, suf) && len(upper) > len(suf) {
			upper = upper[:len(upper)-len(suf)]
			break
		}
	}
	mult := 1.0
	if i := strings.IndexAny(upper, "KMGT"); i >= 0 {
		if i != len(upper)-1 {
			return 0, fmt.Errorf("size %q: want a number and one of the units K, M, G, T", s)
		}
		mult = math.Pow(1024, float64(strings.IndexByte("KMGT", upper[i])+1))
		upper = upper[:i]
	}
	v, err := strconv.ParseFloat(upper, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("size %q: want a number and one of the units K, M, G, T", s)
	}
	n := v * mult
	if n < 1 {
		return 0, fmt.Errorf("size %q: must be at least one byte", s)
	}
	if n >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return int64(n), nil
}
