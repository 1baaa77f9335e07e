package rls

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is one problem of a config file, with where it is.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// Source is one config file's name and contents.
type Source struct {
	Name string
	Data []byte
}

// AppDirectory is the directory below the runtime root and subdirectory
// that envoyproxy/ratelimit reads its config files from
// (RUNTIME_APPDIRECTORY's default).
const AppDirectory = "config"

// Files lists the config files of dir as envoyproxy/ratelimit lays them
// out: dir is RUNTIME_ROOT/RUNTIME_SUBDIRECTORY, and the files are the
// *.yaml and *.yml below dir/config (dir itself when it has no config
// directory), in lexical order, skipping names that start with a dot (as
// RUNTIME_IGNOREDOTFILES does, and so a Kubernetes ConfigMap's ..data
// directory is read once, through its links).
func Files(dir string) ([]string, error) {
	root := filepath.Join(dir, AppDirectory)
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		root = dir
	}
	if st, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("rls: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("rls: %s is not a directory", root)
	}
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		if ext := filepath.Ext(p); ext == ".yaml" || ext == ".yml" {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rls: %w", err)
	}
	sort.Strings(files)
	return files, nil
}

// Load reads and compiles every config file of dir (see Files). A directory
// with no file is an empty config: every descriptor is then let through,
// as that server lets through an unknown domain.
func Load(dir string) (*Config, error) {
	files, err := Files(dir)
	if err != nil {
		return nil, err
	}
	srcs := make([]Source, 0, len(files))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("rls: %w", err)
		}
		srcs = append(srcs, Source{Name: f, Data: data})
	}
	return Compile(srcs...)
}

// maxFileBytes bounds one config file.
const maxFileBytes = 8 << 20

// maxNodes bounds the YAML nodes one file may expand to (aliases and
// merge keys included), so that a "billion laughs" fails fast.
const maxNodes = 1_000_000

// Compile compiles config files, each one domain, reporting every problem
// with its file and line.
func Compile(srcs ...Source) (*Config, error) {
	c := &Config{domains: map[string]*node{}}
	where := map[string]string{} // domain → the file that defined it
	var errs []error
	for _, src := range srcs {
		c.Files = append(c.Files, src.Name)
		d := &decoder{file: src.Name}
		d.file1(c, where, src.Data)
		errs = append(errs, d.errs...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

type decoder struct {
	file  string
	errs  []error
	nodes int
}

func (d *decoder) fail(n *yaml.Node, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) file1(c *Config, where map[string]string, data []byte) {
	if len(data) > maxFileBytes {
		d.fail(nil, "file is larger than %d bytes", maxFileBytes)
		return
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		d.fail(nil, "%v", err)
		return
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		d.fail(nil, "config file is empty: it needs a domain")
		return
	}
	root := d.mapping(doc.Content[0], "the file")
	if root == nil {
		return
	}
	var domain string
	var descs *yaml.Node
	for _, kv := range root {
		switch kv.key.Value {
		case "domain":
			domain, _ = d.str(kv.val, "domain")
		case "descriptors":
			descs = kv.val
		default:
			d.fail(kv.key, "unknown key %q (want domain and descriptors)", kv.key.Value)
		}
	}
	if domain == "" {
		d.fail(doc.Content[0], "config file cannot have empty domain")
		return
	}
	if prev, dup := where[domain]; dup {
		d.fail(doc.Content[0], "duplicate domain %q: already defined in %s", domain, prev)
		return
	}
	where[domain] = d.file
	top := newNode()
	d.descriptors(c, top, domain, domain, descs)
	top.children = true
	if len(d.errs) == 0 {
		c.domains[domain] = top
	}
}

type pair struct{ key, val *yaml.Node }

// resolve follows aliases and counts the nodes a file expands to.
func (d *decoder) resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	d.nodes++
	return n
}

// mapping returns n's entries, merge keys (<<) expanded, or nil (after
// reporting) when n is not a mapping.
func (d *decoder) mapping(n *yaml.Node, what string) []pair {
	n = d.resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		d.fail(n, "%s must be a mapping, got %s", what, kindName(n))
		return nil
	}
	var out []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := d.resolve(n.Content[i]), n.Content[i+1]
		if d.nodes > maxNodes {
			d.fail(n, "the file expands to more than %d nodes", maxNodes)
			return nil
		}
		if k.Kind != yaml.ScalarNode {
			d.fail(k, "config error, key is not of type string")
			continue
		}
		if k.Tag == "!!merge" {
			v = d.resolve(v)
			srcs := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				srcs = v.Content
			}
			for _, s := range srcs {
				out = append(out, d.mapping(s, "a merged value")...)
			}
			continue
		}
		out = append(out, pair{k, v})
	}
	// a key written after a merge overrides the merged one
	seen := map[string]int{}
	kept := out[:0]
	for _, p := range out {
		if j, ok := seen[p.key.Value]; ok {
			kept[j] = p
			continue
		}
		seen[p.key.Value] = len(kept)
		kept = append(kept, p)
	}
	return kept
}

func kindName(n *yaml.Node) string {
	if n == nil {
		return "nothing"
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return "a scalar " + strconv.Quote(n.Value)
	}
	return "nothing"
}

// str reads a scalar as a string (a number or a bool reads as written, as
// that server's YAML decoder reads it); null is empty.
func (d *decoder) str(n *yaml.Node, what string) (string, bool) {
	n = d.resolve(n)
	if n.Kind != yaml.ScalarNode {
		d.fail(n, "%s must be a string, got %s", what, kindName(n))
		return "", false
	}
	if n.Tag == "!!null" {
		return "", true
	}
	return n.Value, true
}

func (d *decoder) boolean(n *yaml.Node, what string) bool {
	n = d.resolve(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return false
	}
	var b bool
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
		d.fail(n, "%s must be true or false, got %s", what, kindName(n))
		return false
	}
	return b
}

func (d *decoder) list(n *yaml.Node, what string) []*yaml.Node {
	n = d.resolve(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.fail(n, "%s must be a list, got %s", what, kindName(n))
		return nil
	}
	return n.Content
}

// descriptors compiles one descriptor list into parent.
func (d *decoder) descriptors(c *Config, parent *node, domain, path string, list *yaml.Node) {
	if list == nil {
		return
	}
	for _, item := range d.list(list, "descriptors") {
		kvs := d.mapping(item, "a descriptor")
		if kvs == nil {
			continue
		}
		var key, value string
		var rl, nested *yaml.Node
		var shadow, quota, detailed, share bool
		for _, kv := range kvs {
			switch kv.key.Value {
			case "key":
				key, _ = d.str(kv.val, "key")
			case "value":
				value, _ = d.str(kv.val, "value")
			case "rate_limit":
				rl = kv.val
			case "descriptors":
				nested = kv.val
			case "shadow_mode":
				shadow = d.boolean(kv.val, "shadow_mode")
			case "quota_mode":
				quota = d.boolean(kv.val, "quota_mode")
			case "detailed_metric":
				detailed = d.boolean(kv.val, "detailed_metric")
			case "value_to_metric":
				d.boolean(kv.val, "value_to_metric") // names that server's stats only
			case "share_threshold":
				share = d.boolean(kv.val, "share_threshold")
			case "metadata":
				d.mapping(kv.val, "metadata") // returned in that server's dynamic metadata; not by Tollgate
			default:
				d.fail(kv.key, "config error, unknown key %q", kv.key.Value)
			}
		}
		if key == "" {
			d.fail(item, "descriptor has empty key")
			continue
		}
		final := key
		if value != "" {
			final += "_" + value
		}
		here := path + "." + final
		wild := strings.Contains(value, "*")
		if share && !wild {
			d.fail(item, "share_threshold can only be used with wildcard values (containing '*'), but found key '%s'", final)
		}
		n := newNode()
		switch {
		case value == "":
			if _, dup := parent.byKey[key]; dup {
				d.fail(item, "duplicate descriptor composite key '%s'", here)
				continue
			}
			parent.byKey[key] = n
		case wild:
			for _, w := range parent.wild {
				if w.key == key && w.pattern == value {
					d.fail(item, "duplicate descriptor composite key '%s'", here)
				}
			}
			parent.wild = append(parent.wild, wildcard{key: key, parts: strings.Split(value, "*"), share: share, pattern: value, n: n})
		default:
			e := Entry{Key: key, Value: value}
			if _, dup := parent.exact[e]; dup {
				d.fail(item, "duplicate descriptor composite key '%s'", here)
				continue
			}
			parent.exact[e] = n
		}
		if rl != nil {
			if r := d.rateLimit(rl, domain, here); r != nil {
				r.ShadowMode, r.QuotaMode, r.DetailedMetric = shadow, quota, detailed
				n.rule = r
				c.Rules = append(c.Rules, r)
			}
		}
		if nested != nil {
			d.descriptors(c, n, domain, here, nested)
			n.children = len(n.exact) > 0 || len(n.wild) > 0 || len(n.byKey) > 0
		}
	}
}

// rateLimit compiles a rate_limit block.
func (d *decoder) rateLimit(n *yaml.Node, domain, path string) *Rule {
	kvs := d.mapping(n, "rate_limit")
	if kvs == nil {
		return nil
	}
	r := &Rule{Domain: domain, Path: path, File: d.file, Line: d.resolve(n).Line}
	var unit string
	var unitNode *yaml.Node
	ok := true
	for _, kv := range kvs {
		switch kv.key.Value {
		case "unit":
			unit, _ = d.str(kv.val, "unit")
			unitNode = kv.val
		case "requests_per_unit":
			v := d.resolve(kv.val)
			u, err := strconv.ParseUint(v.Value, 10, 32)
			if v.Kind != yaml.ScalarNode || v.Tag != "!!int" || err != nil {
				d.fail(v, "requests_per_unit must be a whole number from 0 to %d, got %s", uint32(1<<32-1), kindName(v))
				ok = false
			}
			r.RequestsPerUnit = uint32(u)
		case "unlimited":
			r.Unlimited = d.boolean(kv.val, "unlimited")
		case "name":
			r.Name, _ = d.str(kv.val, "name")
		case "replaces":
			for _, e := range d.list(kv.val, "replaces") {
				var name string
				for _, p := range d.mapping(e, "a replaces entry") {
					if p.key.Value != "name" {
						d.fail(p.key, "config error, unknown key %q", p.key.Value)
						continue
					}
					name, _ = d.str(p.val, "name")
				}
				if name == "" {
					d.fail(e, "should not have an empty replaces entry")
					ok = false
					continue
				}
				r.Replaces = append(r.Replaces, name)
			}
		default:
			d.fail(kv.key, "config error, unknown key %q", kv.key.Value)
		}
	}
	for _, name := range r.Replaces {
		if name == r.Name {
			d.fail(n, "replaces should not contain name of same descriptor")
			ok = false
		}
	}
	u, valid := ParseUnit(unit)
	switch {
	case r.Unlimited && valid:
		d.fail(unitNode, "should not specify rate limit unit when unlimited")
		return nil
	case r.Unlimited:
	case !valid:
		d.fail(n, "invalid rate limit unit '%s'", unit)
		return nil
	}
	r.Unit = u
	if !r.Unlimited && r.RequestsPerUnit > 0 && ok {
		b, fits := BucketFor(int64(r.RequestsPerUnit), u)
		if !fits {
			d.fail(n, "%d requests per %s cannot be kept by Tollgate's token buckets (capacity at most %d, a refill period of at most a day, within 1%% of the rate)",
				r.RequestsPerUnit, u, maxUnits)
			return nil
		}
		r.Bucket = b
	}
	if !ok {
		return nil
	}
	return r
}
