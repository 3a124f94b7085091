package conversation

import (
	"math/bits"
	"unicode"
	"unicode/utf8"
)

// Repeats are found by comparing 64-bit SimHash fingerprints (Charikar,
// "Similarity estimation techniques from rounding algorithms", STOC 2002)
// of a message's words and word pairs. Two fingerprints differ in about
// θ/π of their bits, θ being the angle between the messages' feature
// vectors, so Similarity = 1 − differing bits / 64 estimates 1 − θ/π:
// 1 for the same words in the same order, about 0.5 for unrelated
// messages, 0.89 for "where is my order" against "where is my order
// please". The fingerprint is all that is kept, in memory only, and is
// never exported (for a short message from a small vocabulary it could be
// matched against guesses, so it is treated as sensitive too).

const (
	// MaxFingerprintBytes is how much of a message is read: a chat message
	// fits, and a pasted document costs no more than its first 2 KiB.
	MaxFingerprintBytes = 2048
	// MinRepeatWords: messages shorter than this ("yes", "ok thanks") are
	// never repeats; users say them again for good reasons.
	MinRepeatWords = 3
	// maxKeywordWords bounds a frustration phrase (words).
	maxKeywordWords = 6
)

// fingerprint is a message reduced to what the tracker keeps.
type fingerprint struct {
	hash  uint64
	words int
	// keyword is true when a frustration keyword occurs in the message.
	keyword bool
}

// comparable reports whether the message is long enough to count as a
// repeat.
func (f fingerprint) comparable() bool { return f.words >= MinRepeatWords }

// Similarity of two fingerprints: the share of equal bits.
func Similarity(a, b uint64) float64 {
	return 1 - float64(bits.OnesCount64(a^b))/64
}

// FNV-1a, 64 bit: fast, allocation-free, good enough spread for SimHash
// features (the SimHash bits come from a further mix, see mix64).
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// mix64 is the splitmix64 finalizer: FNV's low bits are weak for short
// inputs, and SimHash uses every bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// words calls f with the hash of each word of s: maximal runs of letters
// and digits, lowercased (Unicode simple case folding), at most
// MaxFingerprintBytes of s read. It does not allocate.
func words(s string, f func(h uint64)) {
	if len(s) > MaxFingerprintBytes {
		s = s[:MaxFingerprintBytes]
	}
	var h uint64 = fnvOffset
	in := false
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch {
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			default:
				if in {
					f(h)
					h, in = fnvOffset, false
				}
				continue
			}
			h = (h ^ uint64(c)) * fnvPrime
			in = true
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) && !unicode.Is(unicode.Mn, r) {
			if in {
				f(h)
				h, in = fnvOffset, false
			}
			continue
		}
		r = unicode.ToLower(r)
		// Hash the rune's value, not its encoding: same result, no buffer.
		for v := uint32(r); ; v >>= 8 {
			h = (h ^ uint64(v&0xff)) * fnvPrime
			if v < 0x100 {
				break
			}
		}
		in = true
	}
	if in {
		f(h)
	}
}

// keywords is a compiled frustration list: each phrase as word hashes.
type keywords [][]uint64

func normalizeKeyword(k string) []uint64 {
	var hs []uint64
	words(k, func(h uint64) { hs = append(hs, h) })
	return hs
}

func compileKeywords(list []string) keywords {
	var ks keywords
	for _, k := range list {
		if hs := normalizeKeyword(k); len(hs) > 0 {
			ks = append(ks, hs[:min(len(hs), maxKeywordWords)])
		}
	}
	return ks
}

// spread[b] has byte j set to bit j of b: adding spread[byte k of h] to
// lane k adds h's bits 8k..8k+7 to eight byte-wide counters at once, so a
// feature costs eight adds instead of 64 (SWAR counting).
var spread = func() (t [256]uint64) {
	for b := range t {
		for j := 0; j < 8; j++ {
			if b&(1<<j) != 0 {
				t[b] |= 1 << (8 * j)
			}
		}
	}
	return t
}()

// simhash accumulates features. Byte counters hold up to 255; they are
// folded into ones every flushEvery features.
type simhash struct {
	lanes [8]uint64
	ones  [64]uint32
	n     int // features since the last fold
	total int
}

const flushEvery = 255

func (s *simhash) add(h uint64) {
	h = mix64(h)
	for k := 0; k < 8; k++ {
		s.lanes[k] += spread[byte(h>>(8*k))]
	}
	s.total++
	if s.n++; s.n == flushEvery {
		s.fold()
	}
}

func (s *simhash) fold() {
	for k := 0; k < 8; k++ {
		for j := 0; j < 8; j++ {
			s.ones[8*k+j] += uint32(byte(s.lanes[k] >> (8 * j)))
		}
		s.lanes[k] = 0
	}
	s.n = 0
}

// sum sets each bit that most features had set.
func (s *simhash) sum() uint64 {
	s.fold()
	var out uint64
	for b, n := range s.ones {
		if 2*int(n) > s.total {
			out |= 1 << b
		}
	}
	return out
}

// fingerprintOf computes the SimHash of s's words and adjacent word pairs
// and looks for the keywords, in one pass and without allocating.
func fingerprintOf(s string, kws keywords) fingerprint {
	var acc simhash
	var recent [maxKeywordWords]uint64 // last words, recent[0] newest
	var fp fingerprint
	words(s, func(h uint64) {
		copy(recent[1:], recent[:maxKeywordWords-1])
		recent[0] = h
		fp.words++
		acc.add(h)
		if fp.words > 1 {
			acc.add(recent[1]*31 ^ h<<1 ^ 0x9e3779b97f4a7c15)
		}
		if !fp.keyword && len(kws) > 0 {
			fp.keyword = matchKeywords(kws, recent[:min(fp.words, maxKeywordWords)])
		}
	})
	fp.hash = acc.sum()
	return fp
}

// matchKeywords reports whether a phrase ends at the newest word.
func matchKeywords(kws keywords, recent []uint64) bool {
next:
	for _, k := range kws {
		if len(k) > len(recent) {
			continue
		}
		for i, h := range k {
			if recent[len(k)-1-i] != h {
				continue next
			}
		}
		return true
	}
	return false
}

// Fingerprinter computes message fingerprints; it is what the tracker
// uses, exported for benchmarks and for tools that want to check a
// threshold against their own messages.
type Fingerprinter struct{ kws keywords }

// NewFingerprinter compiles a frustration keyword list (may be empty).
func NewFingerprinter(frustrationKeywords []string) *Fingerprinter {
	return &Fingerprinter{kws: compileKeywords(frustrationKeywords)}
}

// Fingerprint returns text's 64-bit SimHash.
func (f *Fingerprinter) Fingerprint(text string) uint64 {
	return fingerprintOf(text, f.kws).hash
}
