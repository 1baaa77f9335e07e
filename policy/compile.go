package policy

import (
	"fmt"
	"strconv"
	"strings"
)

// compiler builds one Set from the documents of every file, collecting every
// problem on the way rather than stopping at the first.
type compiler struct {
	errList
	set     *Set
	defined map[string]place // by kind and name, for duplicates across files
}

// compile runs one step per concern. The order matters: routes and tiers
// name pools, clients and defaults name tiers, and the queue's windows
// default to the policy's time zone.
func (ds *docs) compile() (*Set, []error) {
	c := &compiler{
		set:     &Set{Pools: map[string]*Pool{}, Tiers: map[string]*Tier{}, Clients: map[string]*Client{}},
		defined: map[string]place{},
	}
	c.pools(ds.pools)
	if len(ds.pools) == 0 && !ds.readFailed {
		c.add(ds.first, 0, "pools", "the policy defines no pools; at least one is needed")
	}
	c.routes(ds.routes)
	c.tiers(ds.tiers)
	c.clients(ds.clients)
	c.reservations(ds.pools)
	c.models(ds.models)
	c.defaults(ds.defaults)
	c.queue(ds.queues)
	c.optimize(ds.optimize)
	c.cache(ds.cache)
	c.alerts(ds.alerts)
	return c.set, c.errs
}

// unique reports whether name is the first of its kind, and records a
// problem when it is not.
func (c *compiler) unique(kind, name, file string, line int) bool {
	key := kind + "\x00" + name
	if p, dup := c.defined[key]; dup {
		c.add(file, line, kind+"s."+name, "%s %q is already defined at %s", kind, name, p)
		return false
	}
	c.defined[key] = place{file, line}
	return true
}

// class reads a class name, or returns def when none is given.
func (c *compiler) class(file, path string, v at[string], def Class) Class {
	if !v.set {
		return def
	}
	cls, ok := ParseClass(v.v)
	if !ok {
		c.add(file, v.line, path, "unknown class %q (one of %s)", v.v, strings.Join(classNames[:], ", "))
		return def
	}
	return cls
}

// errList collects the problems compile finds, each located.
type errList struct{ errs []error }

func (l *errList) add(file string, line int, path, format string, args ...any) {
	l.errs = append(l.errs, &Error{File: file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// lineOr returns the value's own line if it was set, else the fallback.
func lineOr[T any](a at[T], fallback int) int {
	if a.set {
		return a.line
	}
	return fallback
}

// place is where something was first defined, for "already defined at".
type place struct {
	file string
	line int
}

func (p place) String() string { return p.file + ":" + strconv.Itoa(p.line) }

// onceOnly remembers where each setting of a block (defaults, queue) was
// first given. Policies merge across files, and a second file must not
// silently override what the first one said.
type onceOnly struct {
	el    *errList
	block string
	seen  map[string]place
}

func newOnceOnly(el *errList, block string) *onceOnly {
	return &onceOnly{el: el, block: block, seen: map[string]place{}}
}

// first reports whether key is given here for the first time, and records a
// problem when it is not.
func (o *onceOnly) first(file string, line int, key string) bool {
	if p, dup := o.seen[key]; dup {
		o.el.add(file, line, o.block+"."+key, "is already set at %s", p)
		return false
	}
	o.seen[key] = place{file, line}
	return true
}

// setOnce reports whether v is given, for the first time across the files.
func setOnce[T any](o *onceOnly, file, key string, v at[T]) bool {
	return v.set && o.first(file, v.line, key)
}

// joinNames lists the allowed values for an error message.
func joinNames[T ~string](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = string(x)
	}
	return strings.Join(s, ", ")
}

// known lists the names a reference could have meant, for an error message.
func known[T any](m map[string]T) string {
	if len(m) == 0 {
		return " (none are defined)"
	}
	return " (known: " + strings.Join(sortedKeys(m), ", ") + ")"
}
