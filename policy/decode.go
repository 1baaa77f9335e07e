package policy

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is one problem in a policy file, located by file, line and the YAML
// path of the offending value.
type Error struct {
	File string
	Line int
	Path string
	Msg  string
}

func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc += ":" + strconv.Itoa(e.Line)
	}
	if e.Path != "" {
		return loc + ": " + e.Path + ": " + e.Msg
	}
	return loc + ": " + e.Msg
}

// at is a decoded value with the line it came from.
type at[T any] struct {
	v    T
	line int
	set  bool
	bad  bool // present but unreadable (already reported)
}

// missing reports a value that is absent, as opposed to present but wrong.
func (a at[T]) missing() bool { return !a.set && !a.bad }

// decoder walks yaml.v3 nodes by hand so that every error carries a line and
// a path, unknown keys are refused, and numbers and money are read from their
// literal text (never through float64).
type decoder struct {
	file string
	errs []error
	// merged counts the entries merge keys (<<) have copied, so that a
	// "billion laughs" of nested merges fails fast instead of hanging.
	merged int
}

// maxMergedEntries bounds the work merge keys can cause in one file.
const maxMergedEntries = 10_000

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

type mapNode struct {
	d      *decoder
	n      *yaml.Node
	path   string
	keys   []string
	vals   map[string]*yaml.Node
	keyAt  map[string]*yaml.Node
	merged map[string]bool
	known  []string
	closed bool
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "nothing (null)"
		case "!!bool":
			return "a true/false value"
		case "!!int":
			return "a whole number"
		}
		if _, err := wholeNumber(n); errors.Is(err, errTooLarge) || errors.Is(err, errTooSmall) {
			return "a whole number too large for 64 bits"
		}
		if n.Tag == "!!float" {
			return "a decimal number"
		}
		return fmt.Sprintf("the text %q", n.Value)
	}
	return "something else"
}

// mapping opens n as a mapping. It returns nil (after recording why) when n
// is not one.
func (d *decoder) mapping(n *yaml.Node, path string) *mapNode {
	n = deref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		if n != nil && n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return &mapNode{d: d, n: n, path: path, vals: map[string]*yaml.Node{}, keyAt: map[string]*yaml.Node{}, merged: map[string]bool{}}
		}
		d.fail(n, path, "must be a mapping of key: value lines, got %s", kindName(n))
		return nil
	}
	m := &mapNode{d: d, n: n, path: path, vals: map[string]*yaml.Node{}, keyAt: map[string]*yaml.Node{}, merged: map[string]bool{}}
	m.add(n, true, nil)
	return m
}

// add copies n's entries into m. own is false for entries reached through a
// merge key; chain holds the mappings being merged, to refuse a cycle.
func (m *mapNode) add(n *yaml.Node, own bool, chain []*yaml.Node) {
	if slices.Contains(chain, n) {
		m.d.fail(n, m.path, "a merge key (<<) refers back to its own mapping")
		return
	}
	chain = append(chain, n)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			m.d.fail(k, m.path, "keys must be plain names")
			continue
		}
		if k.Value == "<<" && k.Tag == "!!merge" { // YAML merge key: <<: *anchor
			srcs := []*yaml.Node{deref(v)}
			if srcs[0] != nil && srcs[0].Kind == yaml.SequenceNode { // <<: [*a, *b]
				srcs = srcs[0].Content
			}
			for _, src := range srcs {
				src = deref(src)
				if src == nil || src.Kind != yaml.MappingNode {
					m.d.fail(k, m.path, "a merge key (<<) must point at a mapping")
					continue
				}
				if m.d.merged += len(src.Content) / 2; m.d.merged > maxMergedEntries {
					if m.d.merged-len(src.Content)/2 <= maxMergedEntries { // report once
						m.d.fail(k, m.path, "merge keys (<<) expand to more than %d entries", maxMergedEntries)
					}
					return
				}
				m.add(src, false, chain)
			}
			continue
		}
		if first, dup := m.keyAt[k.Value]; dup {
			switch {
			case !own: // an explicit key beats a merged one, and the first merge wins
				continue
			case !m.merged[k.Value]:
				m.d.fail(k, join(m.path, k.Value), "duplicate key (first set on line %d)", first.Line)
				continue
			}
			delete(m.merged, k.Value)
		} else {
			m.keys = append(m.keys, k.Value)
			if !own {
				m.merged[k.Value] = true
			}
		}
		m.keyAt[k.Value] = k
		m.vals[k.Value] = v
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// get marks key as known and returns its value node (nil when absent).
func (m *mapNode) get(key string) *yaml.Node {
	m.known = append(m.known, key)
	return m.vals[key]
}

// close reports every key that no get asked for.
func (m *mapNode) close() {
	if m.closed {
		return
	}
	m.closed = true
	for _, k := range m.keys {
		if slices.Contains(m.known, k) {
			continue
		}
		msg := fmt.Sprintf("unknown field %q", k)
		if s := suggest(k, m.known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		} else if len(m.known) > 0 {
			msg += " (allowed: " + strings.Join(m.known, ", ") + ")"
		}
		m.d.fail(m.keyAt[k], m.path, "%s", msg)
	}
}

// each visits the entries of a name → value mapping in file order.
func (m *mapNode) each(fn func(name string, key, val *yaml.Node)) {
	for _, k := range m.keys {
		m.known = append(m.known, k)
		fn(k, m.keyAt[k], m.vals[k])
	}
}

// The readers below are the one way a policy section is walked: open a
// mapping, let the section's read function ask for the fields it knows, then
// refuse every field it did not ask for (with a did-you-mean). Each section
// states only its fields; the walking, paths and lines live here once.
//
// The order in which a read function asks for fields is the order the
// "allowed:" hint of an unknown field lists them, so keep it stable.

// readMapping opens n as the mapping at path and reads it with read. ok is
// false (after recording why) when n is not a mapping.
func readMapping[T any](d *decoder, n *yaml.Node, path string, read func(m *mapNode) T) (v T, ok bool) {
	m := d.mapping(n, path)
	if m == nil {
		return v, false
	}
	v = read(m)
	m.close()
	return v, true
}

// readSection reads parent's key as a section of named entries, such as
// pools: {name: {fields}}, calling read for each entry in file order with the
// entry's name and the line of that name. A missing section reads as empty.
func readSection[T any](parent *mapNode, key string, read func(m *mapNode, name string, line int) T) []T {
	v := parent.get(key)
	if v == nil {
		return nil
	}
	path := join(parent.path, key)
	sm := parent.d.mapping(v, path)
	if sm == nil {
		return nil
	}
	var out []T
	sm.each(func(name string, k, v *yaml.Node) {
		e, ok := readMapping(parent.d, v, path+"."+name, func(m *mapNode) T { return read(m, name, k.Line) })
		if ok {
			out = append(out, e)
		}
	})
	return out
}

// readBlock reads parent's key as one mapping of settings, such as defaults:
// or queue:, calling read with the line of its value. ok is false when the
// key is absent or not a mapping.
func readBlock[T any](parent *mapNode, key string, read func(m *mapNode, line int) T) (v T, ok bool) {
	n := parent.get(key)
	if n == nil {
		return v, false
	}
	return readMapping(parent.d, n, join(parent.path, key), func(m *mapNode) T { return read(m, m.n.Line) })
}

// readList reads parent's key as a list of mappings, calling read for each
// item with its line; what names the items for the error when the value is
// not a list. line is that of the value, 0 when the key is absent.
func readList[T any](parent *mapNode, key, what string, read func(m *mapNode, line int) T) (items []T, line int) {
	n := deref(parent.get(key))
	if n == nil {
		return nil, 0
	}
	path := join(parent.path, key)
	if n.Kind != yaml.SequenceNode {
		parent.d.fail(n, path, "must be a list of %s, got %s", what, kindName(n))
		return nil, n.Line
	}
	for i, item := range n.Content {
		e, ok := readMapping(parent.d, item, fmt.Sprintf("%s[%d]", path, i), func(m *mapNode) T { return read(m, m.n.Line) })
		if ok {
			items = append(items, e)
		}
	}
	return items, n.Line
}

// field reads key's value with conv, which records why a value is wrong and
// returns ok false. The result carries the value's line either way, and
// marks a wrong value bad so that compile does not also call it missing.
func field[T any](m *mapNode, key string, conv func(n *yaml.Node, path string) (v T, ok bool)) at[T] {
	n := deref(m.get(key))
	if n == nil {
		return at[T]{}
	}
	v, ok := conv(n, join(m.path, key))
	if !ok {
		return at[T]{line: n.Line, bad: true}
	}
	return at[T]{v: v, line: n.Line, set: true}
}

func (m *mapNode) str(key string) at[string] {
	return field(m, key, func(n *yaml.Node, path string) (string, bool) {
		if n.Kind != yaml.ScalarNode || n.Tag == "!!null" || n.Tag == "!!bool" {
			m.d.fail(n, path, "must be text, got %s", kindName(n))
			return "", false
		}
		return n.Value, true
	})
}

func (m *mapNode) int(key string) at[int64] {
	return field(m, key, func(n *yaml.Node, path string) (int64, bool) {
		v, err := wholeNumber(n)
		switch {
		case errors.Is(err, errTooLarge):
			m.d.fail(n, path, "%s is too large for a whole number (at most %d)", n.Value, int64(math.MaxInt64))
		case errors.Is(err, errTooSmall):
			m.d.fail(n, path, "%s is too small for a whole number (at least %d)", n.Value, int64(math.MinInt64))
		case n.Kind != yaml.ScalarNode || n.Tag != "!!int":
			m.d.fail(n, path, "must be a whole number, got %s", kindName(n))
		case err != nil:
			m.d.fail(n, path, "%q is not a whole number", n.Value)
		default:
			return v, true
		}
		return 0, false
	})
}

func (m *mapNode) bool(key string) at[bool] {
	return field(m, key, func(n *yaml.Node, path string) (bool, bool) {
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			m.d.fail(n, path, "must be true or false, got %s", kindName(n))
			return false, false
		}
		v, err := strconv.ParseBool(strings.ToLower(n.Value))
		if err != nil {
			m.d.fail(n, path, "must be true or false, got %q", n.Value)
			return false, false
		}
		return v, true
	})
}

// scalarText returns the literal text of a number or string scalar, for
// values (money, prices) that must never pass through float64.
func (m *mapNode) scalarText(key string) at[string] {
	return field(m, key, func(n *yaml.Node, path string) (string, bool) {
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float" && n.Tag != "!!str") {
			m.d.fail(n, path, "must be an amount such as \"1000\" or \"0.03/1K\", got %s", kindName(n))
			return "", false
		}
		return n.Value, true
	})
}

// strs reads a list of names; a single name is a list of one. A wrong item
// is reported and skipped, so the rest can still be checked.
func (m *mapNode) strs(key string) at[[]string] {
	return field(m, key, func(n *yaml.Node, path string) ([]string, bool) {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!str" {
			return []string{n.Value}, true
		}
		if n.Kind != yaml.SequenceNode {
			m.d.fail(n, path, "must be a list of names, got %s", kindName(n))
			return nil, false
		}
		out := make([]string, 0, len(n.Content))
		for i, c := range n.Content {
			c = deref(c)
			if c.Kind != yaml.ScalarNode || c.Tag == "!!null" || c.Tag == "!!bool" {
				m.d.fail(c, fmt.Sprintf("%s[%d]", path, i), "must be a name, got %s", kindName(c))
				continue
			}
			out = append(out, c.Value)
		}
		return out, true
	})
}

// suggest returns the known key closest to k when it is a likely typo.
func suggest(k string, known []string) string {
	best, bestD := "", 3
	for _, c := range known {
		if d := editDistance(k, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// errTooLarge and errTooSmall say a whole number does not fit in 64 bits.
var (
	errTooLarge = errors.New("too large for 64 bits")
	errTooSmall = errors.New("too small for 64 bits")
)

// wholeNumber reads an unquoted scalar written as a whole number (decimal,
// or 0x, 0o, 0b; underscores allowed), whatever tag YAML gave it: YAML
// types a decimal too large for 64 bits a float, and such a hexadecimal
// one text, so that without this a number too large would be reported as
// "a decimal number". It returns errTooLarge or errTooSmall for a whole
// number beyond 64 bits, and another error for anything else.
func wholeNumber(n *yaml.Node) (int64, error) {
	const quoted = yaml.DoubleQuotedStyle | yaml.SingleQuotedStyle | yaml.LiteralStyle | yaml.FoldedStyle
	if n.Kind != yaml.ScalarNode || n.Style&quoted != 0 || (n.Tag != "!!int" && n.Tag != "!!float" && n.Tag != "!!str") {
		return 0, errors.New("not a whole number")
	}
	v, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
	if errors.Is(err, strconv.ErrRange) {
		if strings.HasPrefix(n.Value, "-") {
			return 0, errTooSmall
		}
		return 0, errTooLarge
	}
	return v, err
}
