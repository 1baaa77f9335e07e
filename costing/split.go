package costing

import (
	"unicode"
	"unicode/utf8"
)

// The pre-tokenizers of cl100k_base and o200k_base, written out by hand.
// They cut text exactly where tiktoken's regular expressions (patCL100K and
// patO200K, run by regexp2 as tiktoken-go does) cut it: each function below
// is one alternative of a pattern, tried in the pattern's order, with the
// backtracking of its greedy quantifiers worked out (see each comment).
// FuzzSplit holds them to the regular expressions on arbitrary text. They
// are some twenty times faster than the regular expressions, which is most
// of what a Check spends.

// Character classes, as regexp2 tests them: \s is unicode.IsSpace, \p{X}
// Go's unicode tables.
const (
	cLetter  = 1 << iota // \p{L}
	cNumber              // \p{N}
	cSpace               // \s
	cNewline             // [\r\n]
	cUpper               // o200k's [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
	cLower               // o200k's [\p{Ll}\p{Lm}\p{Lo}\p{M}]
)

var asciiClass = func() (t [utf8.RuneSelf]uint8) {
	for r := range rune(utf8.RuneSelf) {
		t[r] = classOf(r)
	}
	return t
}()

func classOf(r rune) uint8 {
	var c uint8
	if unicode.IsLetter(r) {
		c |= cLetter
	}
	if unicode.IsNumber(r) {
		c |= cNumber
	}
	if unicode.IsSpace(r) {
		c |= cSpace
	}
	if r == '\r' || r == '\n' {
		c |= cNewline
	}
	if unicode.In(r, unicode.Lu, unicode.Lt, unicode.Lm, unicode.Lo, unicode.M) {
		c |= cUpper
	}
	if unicode.In(r, unicode.Ll, unicode.Lm, unicode.Lo, unicode.M) {
		c |= cLower
	}
	return c
}

// at returns the class and width of the rune at s[i:]. s is valid UTF-8.
func at(s string, i int) (uint8, int) {
	if b := s[i]; b < utf8.RuneSelf {
		return asciiClass[b], 1
	}
	r, w := utf8.DecodeRuneInString(s[i:])
	return classOf(r), w
}

// run returns the end of the longest run from i of runes whose class has a
// bit of want, and how many runes it holds.
func run(s string, i int, want uint8) (end, n int) {
	for i < len(s) {
		c, w := at(s, i)
		if c&want == 0 {
			break
		}
		i += w
		n++
	}
	return i, n
}

// otherClass is [^\r\n\p{L}\p{N}]: anything but a newline, letter or number.
func isOther(c uint8) bool { return c&(cNewline|cLetter|cNumber) == 0 }

// punct is [^\s\p{L}\p{N}].
func isPunct(c uint8) bool { return c&(cSpace|cLetter|cNumber) == 0 }

// contraction matches (?i:'s|'t|'re|'ve|'m|'ll|'d) at i; it returns the end,
// or i. Case folding in regexp2 lowers the input with unicode.ToLower, so
// only ASCII letters fold onto these.
func contraction(s string, i int) int {
	if i+1 >= len(s) || s[i] != '\'' {
		return i
	}
	lower := func(b byte) byte { return b | 0x20 }
	switch lower(s[i+1]) {
	case 's', 't', 'm', 'd':
		return i + 2
	case 'r', 'v':
		if i+2 < len(s) && lower(s[i+2]) == 'e' {
			return i + 3
		}
	case 'l':
		if i+2 < len(s) && lower(s[i+2]) == 'l' {
			return i + 3
		}
	}
	return i
}

// digits is \p{N}{1,3}.
func digits(s string, i int) int {
	for k := 0; k < 3 && i < len(s); k++ {
		c, w := at(s, i)
		if c&cNumber == 0 {
			break
		}
		i += w
	}
	return i
}

// punctRun is ` ?[^\s\p{L}\p{N}]+` followed by trailer* ([\r\n]* for
// cl100k, [\r\n/]* for o200k). With the space taken, the run must follow;
// without it, a space cannot start the run (it is \s), so there is nothing
// to backtrack into.
func punctRun(s string, i int, slash bool) int {
	j := i
	if s[j] == ' ' {
		j++
	}
	if j >= len(s) {
		return i
	}
	c, w := at(s, j)
	if !isPunct(c) {
		return i
	}
	j += w
	for j < len(s) {
		if c, w := at(s, j); isPunct(c) {
			j += w
			continue
		}
		break
	}
	for j < len(s) && (s[j] == '\r' || s[j] == '\n' || (slash && s[j] == '/')) {
		j++
	}
	return j
}

// spaces covers the three whitespace alternatives, in order:
//
//	\s*[\r\n]+  the whitespace run up to and including its last newline
//	            (\s* gives back characters until [\r\n]+ can start)
//	\s+(?!\S)   the run, less its last character when a non-space follows
//	            (the lookahead must see whitespace or the end)
//	\s+         the run (a single space before a non-space)
func spaces(s string, i int) int {
	end, n := run(s, i, cSpace)
	if n == 0 {
		return i
	}
	lastNL := -1
	for k := i; k < end; k++ { // newlines are ASCII: scan bytes
		if s[k] == '\r' || s[k] == '\n' {
			lastNL = k
		}
	}
	if lastNL >= 0 {
		return lastNL + 1
	}
	if end == len(s) || n == 1 {
		return end
	}
	_, w := utf8.DecodeLastRuneInString(s[:end])
	return end - w
}

// splitCL100K calls yield with each piece of s (valid UTF-8), as
// cl100k_base's pattern cuts it:
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
func splitCL100K(s string, yield func(string)) {
	for i := 0; i < len(s); {
		j := contraction(s, i)
		if j == i {
			j = cl100kWord(s, i)
		}
		if j == i {
			j = digits(s, i)
		}
		if j == i {
			j = punctRun(s, i, false)
		}
		if j == i {
			j = spaces(s, i)
		}
		if j == i { // no alternative matches here: the regexp skips the rune
			_, w := at(s, i)
			i += w
			continue
		}
		yield(s[i:j])
		i = j
	}
}

// cl100kWord is [^\r\n\p{L}\p{N}]?\p{L}+: with the optional character taken,
// letters must follow; without it, they must start here.
func cl100kWord(s string, i int) int {
	c, w := at(s, i)
	if isOther(c) {
		if i+w < len(s) {
			if end, n := run(s, i+w, cLetter); n > 0 {
				return end
			}
		}
		return i // the character is not a letter either: nothing without it
	}
	end, _ := run(s, i, cLetter)
	return end
}

// splitO200K calls yield with each piece of s (valid UTF-8), as
// o200k_base's pattern cuts it:
//
//	[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//	|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//	|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
func splitO200K(s string, yield func(string)) {
	var buf [32]int // o200kLower's scratch: a run of more capital letters grows it on the heap
	offs := buf[:0]
	for i := 0; i < len(s); {
		var j int
		j, offs = o200kLower(s, i, offs)
		if j == i {
			j = o200kUpper(s, i)
		}
		if j == i {
			j = digits(s, i)
		}
		if j == i {
			j = punctRun(s, i, true)
		}
		if j == i {
			j = spaces(s, i)
		}
		if j == i {
			_, w := at(s, i)
			i += w
			continue
		}
		yield(s[i:j])
		i = j
	}
}

// o200kLower is the first alternative, P? U* L+ C?. For each choice of the
// optional P (taken, then not), U* starts greedy over the longest U run and
// gives back one character at a time until L+ can start; L+ then takes the
// longest L run (nothing after it needs a shorter one: C? is optional). The
// first position L+ can start at, scanning back from the end of the U run,
// decides. offs is scratch for the run's rune offsets.
func o200kLower(s string, i int, offs []int) (int, []int) {
	c, w := at(s, i)
	starts := [2]int{i + w, i}
	if !isOther(c) {
		starts[0] = -1 // P cannot be taken
	}
	for _, q := range starts {
		if q < 0 || q >= len(s) {
			continue
		}
		offs = offs[:0]
		j := q
		for j < len(s) {
			c, w := at(s, j)
			if c&cUpper == 0 {
				break
			}
			offs = append(offs, j)
			j += w
		}
		offs = append(offs, j) // the position after the run: L+ may start there
		for k := len(offs) - 1; k >= 0; k-- {
			p := offs[k]
			if p >= len(s) {
				continue
			}
			if c, _ := at(s, p); c&cLower != 0 {
				end, _ := run(s, p, cLower)
				return contraction(s, end), offs
			}
		}
	}
	return i, offs
}

// o200kUpper is the second alternative, P? U+ L* C?: U+ greedy, then L*
// greedy; with U+ matched nothing needs to backtrack.
func o200kUpper(s string, i int) int {
	c, w := at(s, i)
	for _, q := range [2]int{i + w, i} {
		if q == i+w && !isOther(c) {
			continue
		}
		if q >= len(s) {
			continue
		}
		end, n := run(s, q, cUpper)
		if n == 0 {
			continue
		}
		end, _ = run(s, end, cLower)
		return contraction(s, end)
	}
	return i
}
