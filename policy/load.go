package policy

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Source is one policy file's name and contents.
type Source struct {
	Name string
	Data []byte
}

//go:embed default.yaml
var defaultYAML []byte

// DefaultSource is the bundled default policy.
func DefaultSource() Source { return Source{Name: "default.yaml (bundled)", Data: defaultYAML} }

// Default compiles the bundled default policy. It panics only if the
// bundled file is broken, which a test rules out.
func Default() *Set {
	s, err := Compile(DefaultSource())
	if err != nil {
		panic("policy: bundled default is invalid: " + err.Error())
	}
	return s
}

// Parse compiles a single policy document read from r; name is used in
// error messages.
func Parse(name string, r io.Reader) (*Set, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("policy: read %s: %w", name, err)
	}
	return Compile(Source{Name: name, Data: data})
}

// Load reads a policy from a file, or from every *.yaml / *.yml file below a
// directory (in lexical order), and compiles them into one Set.
func Load(path string) (*Set, error) {
	files, err := Files(path)
	if err != nil {
		return nil, err
	}
	srcs := make([]Source, 0, len(files))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		srcs = append(srcs, Source{Name: f, Data: data})
	}
	return Compile(srcs...)
}

// Files lists the policy files Load would read for path.
func Files(path string) ([]string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if !info.IsDir() {
		return []string{path}, nil
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if strings.HasPrefix(name, ".") && p != path {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.IsDir() && (strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("policy: %s holds no .yaml or .yml files", path)
	}
	sort.Strings(files)
	return files, nil
}

// Compile decodes, merges, validates and compiles policy sources into a Set.
// It reports every problem it finds, each with file, line and reason.
func Compile(srcs ...Source) (*Set, error) {
	var ds docs
	var errs []error
	for _, src := range srcs {
		errs = append(errs, ds.read(src)...)
	}
	ds.readFailed = len(errs) > 0
	s, cerrs := ds.compile()
	errs = append(errs, cerrs...)
	if len(errs) > 0 {
		sort.SliceStable(errs, func(i, j int) bool {
			a, b := errs[i].(*Error), errs[j].(*Error)
			if a.File != b.File {
				return a.File < b.File
			}
			return a.Line < b.Line
		})
		return nil, errors.Join(errs...)
	}
	for _, src := range srcs {
		s.Files = append(s.Files, src.Name)
	}
	s.LoadedAt = time.Now()
	return s, nil
}

// docs are the sections of every file as written, in file order, before
// the cross-checks of compile (a route may name a pool of another file).
type docs struct {
	readFailed bool   // some file had errors: don't pile on "no pools"
	first      string // the first file read, for errors that belong to no line
	defaults   []defaultsDoc
	pools      []poolDoc
	routes     []routeDoc
	tiers      []tierDoc
	clients    []clientDoc
	models     []modelDoc
	queues     []queueDoc
	optimize   []optimizeDoc
	cache      []cacheDoc
	alerts     []alertsDoc
}

// yamlLine picks the line out of a yaml.v3 syntax error, so that it is
// reported like every other problem.
var yamlLine = regexp.MustCompile(`line (\d+): (.*)`)

// read adds the sections of every YAML document in src.
func (ds *docs) read(src Source) []error {
	d := &decoder{file: src.Name}
	if ds.first == "" {
		ds.first = src.Name
	}
	dec := yaml.NewDecoder(bytes.NewReader(src.Data))
	for {
		var root yaml.Node
		err := dec.Decode(&root)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			e := &Error{File: src.Name, Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
			if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
				e.Line, _ = strconv.Atoi(m[1])
				e.Msg = "not valid YAML: " + m[2]
			}
			return append(d.errs, e)
		}
		if len(root.Content) == 0 {
			continue
		}
		ds.readRoot(d, root.Content[0])
	}
	return d.errs
}

// readRoot reads one document's top-level sections.
func (ds *docs) readRoot(d *decoder, n *yaml.Node) {
	top := d.mapping(n, "")
	if top == nil {
		return
	}
	// This order is the order "allowed:" lists the top-level keys in.
	if def, ok := readBlock(top, "defaults", readDefaults); ok {
		ds.defaults = append(ds.defaults, def)
	}
	ds.pools = append(ds.pools, readSection(top, "pools", readPool)...)
	ds.routes = append(ds.routes, readSection(top, "routes", readRoute)...)
	ds.tiers = append(ds.tiers, readSection(top, "tiers", readTier)...)
	if q, ok := readBlock(top, "queue", readQueue); ok {
		ds.queues = append(ds.queues, q)
	}
	ds.models = append(ds.models, readSection(top, "models", readModel)...)
	ds.clients = append(ds.clients, readSection(top, "clients", readClient)...)
	if o, ok := readBlock(top, "optimize", readOptimize); ok {
		ds.optimize = append(ds.optimize, o)
	}
	if c, ok := readBlock(top, "cache", readCache); ok {
		ds.cache = append(ds.cache, c)
	}
	if a, ok := readBlock(top, "alerts", readAlerts); ok {
		ds.alerts = append(ds.alerts, a)
	}
	top.close()
}
