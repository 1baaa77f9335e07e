package admission

import (
	"errors"
	"fmt"
	"strings"
)

// Paths are matched against routes in one canonical spelling, so that a
// caller cannot skip metering by spelling a metered path differently
// (issue 11: "//v1/chat/completions", "/x/../v1/…", "/%76%31/…" matched no
// route and passed under unmatched_route: allow). Envoy normalizes first
// (normalize_path, merge_slashes, escaped slashes rejected); this holds
// whatever sent the check.

// CanonicalPath returns p (a path without its query) in canonical form:
//
//   - percent-escapes of unreserved characters (A-Z a-z 0-9 - . _ ~) are
//     decoded, every other escape is kept with upper-case hex (RFC 3986
//     6.2.2.1-2);
//   - empty segments are dropped (slashes merged), then "." and ".."
//     segments are removed (RFC 3986 5.2.4; ".." never climbs above "/");
//   - a trailing slash is kept.
//
// Letter case is kept: paths are case-sensitive. It refuses a path that
// does not start with "/", a malformed escape, and an escaped or literal
// slash alternative (%2F, %5C, "\"), which servers disagree about. It is
// idempotent: CanonicalPath of its result is the result.
func CanonicalPath(p string) (string, error) {
	if p == "" || p[0] != '/' {
		return "", errors.New("the path does not start with /")
	}
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '\\':
			return "", errors.New("the path holds a backslash")
		case c != '%':
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(p) || unhex(p[i+1]) < 0 || unhex(p[i+2]) < 0 {
			return "", fmt.Errorf("the path has a malformed percent escape at byte %d", i)
		}
		v := byte(unhex(p[i+1])<<4 | unhex(p[i+2]))
		i += 2
		switch {
		case unreserved(v):
			b.WriteByte(v)
		case v == '/' || v == '\\':
			return "", errors.New("the path holds an escaped slash (%2F or %5C)")
		default:
			const hex = "0123456789ABCDEF"
			b.WriteByte('%')
			b.WriteByte(hex[v>>4])
			b.WriteByte(hex[v&15])
		}
	}
	decoded := b.String()
	segs := strings.Split(decoded[1:], "/")
	out := segs[:0:0]
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "", ".":
			trailing = last
			continue
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = last
			continue
		}
		out = append(out, s)
		trailing = false
	}
	if len(out) == 0 {
		return "/", nil
	}
	res := "/" + strings.Join(out, "/")
	if trailing {
		res += "/"
	}
	return res, nil
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
