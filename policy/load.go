package policy

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// MaxCapacity bounds a bucket's capacity and refill so that bucket
// arithmetic (micro-units, microseconds) stays exact in int64 and in Redis's
// Lua numbers (2^53).
const MaxCapacity = 1_000_000_000

// DefaultMaxTokens is the output allowance of an LLM route that states none.
const DefaultMaxTokens = 1024

// MaxBudget bounds a monthly budget ($9 million): the Redis scripts keep
// money in Lua numbers, exact below 2^53 nano-dollars.
const MaxBudget = 9_000_000 * NanosPerDollar

// DefaultReservationTTL is how long an admitted call may stay unsettled
// before its reservation is committed at its estimate.
const DefaultReservationTTL = 10 * time.Minute

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

// documents as written, before cross-checks.
type (
	defaultsDoc struct {
		file                                         string
		line                                         int
		unknownClient, unmatchedRoute, invalidReqest at[string]
		storeUnavailable, timezone, reservationTTL   at[string]
		reservation                                  at[string]
		shadow                                       at[bool]
		adaptive                                     *adaptiveDoc
	}
	adaptiveDoc struct {
		line                                               int
		percentile, minPercent, maxPercent, window, warmup at[int64]
	}
	poolDoc struct {
		file, name       string
		line             int
		unit             at[string]
		capacity, refill at[int64]
		price            at[string]
		shadow           at[bool]
	}
	routeDoc struct {
		file, name       string
		line             int
		host, prefix     at[string]
		models, pools    at[[]string]
		provider         at[string]
		defaultMaxTokens at[int64]
		class            at[string]
	}
	limitDoc struct {
		pool             string
		line             int
		capacity, refill at[int64]
	}
	tierDoc struct {
		file, name    string
		line          int
		priority      at[int64]
		maxConcurrent at[int64]
		budget        at[string]
		maxClass      at[string]
		limits        []limitDoc
	}
	clientDoc struct {
		file, id string
		line     int
		tier     at[string]
		budget   at[string]
		parent   at[string]
	}
	queueDoc struct {
		file                                  string
		line                                  int
		header, horizon, fairness, starvation at[string]
		classes                               []classDoc
		windows                               []windowDoc
		windowsAt                             int // line of off_peak, 0 when absent
	}
	classDoc struct {
		name              string
		line              int
		maxWait           at[string]
		maxDepth, urgency at[int64]
	}
	windowDoc struct {
		line             int
		start, end, zone at[string]
		days             at[[]string]
	}
	modelDoc struct {
		file, name                        string
		line                              int
		input, output, cachedInput, image at[string]
		cacheWrite, audio                 at[string]
		maxOutput                         at[int64]
	}
)

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
}

var yamlLine = regexp.MustCompile(`line (\d+): (.*)`)

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
	top.close()
}

func readDefaults(m *mapNode, line int) defaultsDoc {
	var ad *adaptiveDoc
	if a, ok := readBlock(m, "adaptive", readAdaptive); ok {
		ad = &a
	}
	return defaultsDoc{
		adaptive: ad,
		file:     m.d.file, line: line,
		unknownClient:    m.str("unknown_client"),
		unmatchedRoute:   m.str("unmatched_route"),
		invalidReqest:    m.str("invalid_request"),
		shadow:           m.bool("shadow"),
		storeUnavailable: m.str("store_unavailable"),
		timezone:         m.str("timezone"),
		reservationTTL:   m.str("reservation_ttl"),
		reservation:      m.str("reservation"),
	}
}

func readAdaptive(m *mapNode, line int) adaptiveDoc {
	return adaptiveDoc{line: line, percentile: m.int("percentile"), minPercent: m.int("min_percent"),
		maxPercent: m.int("max_percent"), window: m.int("window"), warmup: m.int("min_samples")}
}

func readPool(m *mapNode, name string, line int) poolDoc {
	return poolDoc{
		file: m.d.file, name: name, line: line,
		unit: m.str("unit"), capacity: m.int("capacity"), refill: m.int("refill_per_second"),
		price: m.scalarText("price"), shadow: m.bool("shadow"),
	}
}

func readRoute(m *mapNode, name string, line int) routeDoc {
	return routeDoc{
		file: m.d.file, name: name, line: line,
		host: m.str("host"), prefix: m.str("path_prefix"), models: m.strs("models"),
		provider: m.str("provider"), pools: m.strs("pools"), defaultMaxTokens: m.int("default_max_tokens"),
		class: m.str("class"),
	}
}

func readTier(m *mapNode, name string, line int) tierDoc {
	return tierDoc{
		file: m.d.file, name: name, line: line,
		priority: m.int("priority"), maxConcurrent: m.int("max_concurrent"), budget: m.scalarText("monthly_budget"),
		maxClass: m.str("max_class"),
		limits:   readSection(m, "client_limits", readLimit),
	}
}

func readLimit(m *mapNode, pool string, line int) limitDoc {
	return limitDoc{pool: pool, line: line, capacity: m.int("capacity"), refill: m.int("refill_per_second")}
}

func readModel(m *mapNode, name string, line int) modelDoc {
	return modelDoc{
		file: m.d.file, name: name, line: line,
		input: m.scalarText("input"), output: m.scalarText("output"),
		cachedInput: m.scalarText("cached_input"), image: m.scalarText("image"), cacheWrite: m.scalarText("cache_write"), audio: m.scalarText("audio"),
		maxOutput: m.int("max_output_tokens"),
	}
}

func readClient(m *mapNode, id string, line int) clientDoc {
	return clientDoc{
		file: m.d.file, id: id, line: line, tier: m.str("tier"), budget: m.scalarText("monthly_budget"),
		parent: m.str("parent"),
	}
}

func readQueue(m *mapNode, line int) queueDoc {
	q := queueDoc{file: m.d.file, line: line, header: m.str("priority_header"), horizon: m.str("wait_horizon"),
		fairness: m.str("fairness_window"), starvation: m.str("starvation_alert")}
	q.classes = readSection(m, "classes", readClass)
	q.windows, q.windowsAt = readList(m, "off_peak", `windows such as - {start: "22:00", end: "06:00"}`, readWindow)
	return q
}

func readClass(m *mapNode, name string, line int) classDoc {
	return classDoc{name: name, line: line, maxWait: m.str("max_wait"), maxDepth: m.int("max_depth"), urgency: m.int("urgency")}
}

func readWindow(m *mapNode, line int) windowDoc {
	return windowDoc{line: line, start: m.str("start"), end: m.str("end"), zone: m.str("timezone"), days: m.strs("days")}
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

// compiler builds one Set from the documents of every file, collecting every
// problem on the way rather than stopping at the first.
type compiler struct {
	errList
	set     *Set
	defined map[string]place // by kind and name, for duplicates across files
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
	c.models(ds.models)
	c.defaults(ds.defaults)
	c.queue(ds.queues)
	return c.set, c.errs
}

func (c *compiler) pools(docs []poolDoc) {
	for _, p := range docs {
		if !c.unique("pool", p.name, p.file, p.line) {
			continue
		}
		c.set.Pools[p.name] = c.pool(p)
	}
}

func (c *compiler) pool(p poolDoc) *Pool {
	path := "pools." + p.name
	pool := &Pool{Name: p.name, Unit: Unit(p.unit.v), Shadow: p.shadow.v}
	if p.unit.missing() {
		c.add(p.file, p.line, path+".unit", "is required (one of %s)", joinNames(units))
	} else if p.unit.set && !slices.Contains(units, pool.Unit) {
		c.add(p.file, p.unit.line, path+".unit", "unknown unit %q (one of %s)", p.unit.v, joinNames(units))
	}
	pool.Limit = c.limit(p.file, p.line, path, p.capacity, p.refill)
	if p.price.set {
		pr, err := ParsePrice(p.price.v)
		if err != nil {
			c.add(p.file, p.price.line, path+".price", "%v", err)
		}
		pool.Price = pr
	}
	return pool
}

func (c *compiler) routes(docs []routeDoc) {
	for _, r := range docs {
		if !c.unique("route", r.name, r.file, r.line) {
			continue
		}
		c.set.Routes = append(c.set.Routes, c.route(r))
	}
	sortRoutes(c.set.Routes)
}

func (c *compiler) route(r routeDoc) *Route {
	path := "routes." + r.name
	rt := &Route{Name: r.name, Host: strings.ToLower(r.host.v), PathPrefix: r.prefix.v, Models: r.models.v,
		Provider: Provider(r.provider.v), DefaultMaxTokens: r.defaultMaxTokens.v}
	if rt.PathPrefix == "" {
		rt.PathPrefix = "/"
	} else if !strings.HasPrefix(rt.PathPrefix, "/") {
		c.add(r.file, r.prefix.line, path+".path_prefix", "must start with /, got %q", rt.PathPrefix)
	}
	if msg := checkHost(rt.Host); msg != "" {
		c.add(r.file, r.host.line, path+".host", "%s, got %q", msg, r.host.v)
	}
	rt.Host = strings.TrimSuffix(strings.TrimPrefix(rt.Host, "["), "]")
	if rt.Provider == "" {
		rt.Provider = ProviderGeneric
	} else if !slices.Contains(providers, rt.Provider) {
		c.add(r.file, r.provider.line, path+".provider", "unknown provider %q (one of %s)", r.provider.v, joinNames(providers))
	}
	switch {
	case r.defaultMaxTokens.set && rt.DefaultMaxTokens <= 0:
		c.add(r.file, r.defaultMaxTokens.line, path+".default_max_tokens", "must be positive, got %d", rt.DefaultMaxTokens)
	case !r.defaultMaxTokens.set:
		rt.DefaultMaxTokens = DefaultMaxTokens
	}
	rt.Class = c.class(r.file, path+".class", r.class, Normal)
	for i, m := range rt.Models {
		if m == "" || strings.Contains(strings.TrimSuffix(m, "*"), "*") {
			c.add(r.file, r.models.line, fmt.Sprintf("%s.models[%d]", path, i), "must be a model name or a prefix ending in *, got %q", m)
		}
	}
	rt.Pools = c.routePools(r, path)
	return rt
}

// routePools resolves a route's pool names, each at most once.
func (c *compiler) routePools(r routeDoc, path string) []*Pool {
	if len(r.pools.v) == 0 && !r.pools.bad {
		c.add(r.file, lineOr(r.pools, r.line), path+".pools", "a route needs at least one pool")
	}
	var pools []*Pool
	for _, name := range r.pools.v {
		p, ok := c.set.Pools[name]
		if !ok {
			c.add(r.file, r.pools.line, path+".pools", "pool %q does not exist%s", name, known(c.set.Pools))
			continue
		}
		if slices.Contains(pools, p) {
			c.add(r.file, r.pools.line, path+".pools", "pool %q is listed twice", name)
			continue
		}
		pools = append(pools, p)
	}
	return pools
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

// budget reads a monthly budget; hint follows a parse error, to say what
// else the field accepts.
func (c *compiler) budget(file, path string, v at[string], hint string) Money {
	m, err := ParseMoney(v.v)
	switch {
	case err != nil:
		c.add(file, v.line, path, "%v%s", err, hint)
	case m < 0:
		c.add(file, v.line, path, "must not be negative, got %s", v.v)
	case m > MaxBudget:
		c.add(file, v.line, path, "must be at most $%s, got %s", MaxBudget, v.v)
	}
	return m
}

func (c *compiler) tiers(docs []tierDoc) {
	for _, t := range docs {
		if !c.unique("tier", t.name, t.file, t.line) {
			continue
		}
		c.set.Tiers[t.name] = c.tier(t)
	}
}

func (c *compiler) tier(t tierDoc) *Tier {
	path := "tiers." + t.name
	tier := &Tier{Name: t.name, Priority: int(t.priority.v), MaxConcurrent: t.maxConcurrent.v, ClientLimits: map[string]Limit{}}
	tier.MaxClass = c.class(t.file, path+".max_class", t.maxClass, Immediate)
	if t.priority.missing() {
		c.add(t.file, t.line, path+".priority", "is required (0 to 40 points)")
	} else if t.priority.set && (t.priority.v < 0 || t.priority.v > 40) {
		c.add(t.file, t.priority.line, path+".priority", "must be between 0 and 40, got %d", t.priority.v)
	}
	if t.maxConcurrent.missing() {
		c.add(t.file, t.line, path+".max_concurrent", "is required (calls in flight per client)")
	} else if t.maxConcurrent.set && t.maxConcurrent.v <= 0 {
		c.add(t.file, t.maxConcurrent.line, path+".max_concurrent", "must be positive, got %d", t.maxConcurrent.v)
	}
	if t.budget.set && !strings.EqualFold(t.budget.v, "custom") {
		tier.MonthlyBudget = c.budget(t.file, path+".monthly_budget", t.budget, " (or \"custom\" for a per-client budget)")
		tier.Budgeted = true
	}
	for _, l := range t.limits {
		lp := path + ".client_limits." + l.pool
		if _, ok := c.set.Pools[l.pool]; !ok {
			c.add(t.file, l.line, lp, "pool %q does not exist%s", l.pool, known(c.set.Pools))
			continue
		}
		tier.ClientLimits[l.pool] = c.limit(t.file, l.line, lp, l.capacity, l.refill)
	}
	return tier
}

// clients compiles the clients, then links each to its parent: a parent
// may be defined after its child, in any file.
func (c *compiler) clients(docs []clientDoc) {
	for _, d := range docs {
		if !c.unique("client", d.id, d.file, d.line) {
			continue
		}
		c.set.Clients[d.id] = c.client(d)
	}
	for _, d := range docs {
		c.linkParent(d)
	}
	for _, d := range docs {
		c.breakParentLoop(d)
	}
}

func (c *compiler) client(d clientDoc) *Client {
	path := "clients." + d.id
	cl := &Client{ID: d.id}
	switch t, ok := c.set.Tiers[d.tier.v]; {
	case d.tier.missing():
		c.add(d.file, d.line, path+".tier", "is required%s", known(c.set.Tiers))
	case !d.tier.set: // present but unreadable, already reported
	case ok:
		cl.Tier = t
	default:
		c.add(d.file, d.tier.line, path+".tier", "tier %q does not exist%s", d.tier.v, known(c.set.Tiers))
	}
	if d.budget.set {
		cl.MonthlyBudget, cl.Budgeted = c.budget(d.file, path+".monthly_budget", d.budget, ""), true
	}
	return cl
}

func (c *compiler) linkParent(d clientDoc) {
	cl := c.set.Clients[d.id]
	if !d.parent.set || cl == nil {
		return
	}
	path := "clients." + d.id + ".parent"
	p, ok := c.set.Clients[d.parent.v]
	switch {
	case !ok:
		c.add(d.file, d.parent.line, path, "client %q does not exist%s", d.parent.v, known(c.set.Clients))
	case p == cl:
		c.add(d.file, d.parent.line, path, "a client cannot be its own parent")
	default:
		cl.Parent = p
	}
}

// breakParentLoop refuses a parent chain that loops: a budget chain would be
// endless.
func (c *compiler) breakParentLoop(d clientDoc) {
	cl := c.set.Clients[d.id]
	if cl == nil || cl.Parent == nil {
		return
	}
	seen := map[*Client]bool{cl: true}
	for p := cl.Parent; p != nil; p = p.Parent {
		if seen[p] {
			c.add(d.file, d.parent.line, "clients."+d.id+".parent", "the parent chain loops back to %q", p.ID)
			cl.Parent = nil // break the loop so nothing walks it forever
			return
		}
		seen[p] = true
	}
}

func (c *compiler) models(docs []modelDoc) {
	c.set.Models = map[string]*Model{}
	for _, md := range docs {
		if !c.unique("model", md.name, md.file, md.line) {
			continue
		}
		if md.name != "*" && (md.name == "" || strings.Contains(strings.TrimSuffix(md.name, "*"), "*")) {
			c.add(md.file, md.line, "models."+md.name, "a model is a name, a prefix ending in *, or \"*\" for every other model")
			continue
		}
		c.set.Models[md.name] = c.model(md)
	}
}

func (c *compiler) model(md modelDoc) *Model {
	path := "models." + md.name
	m := &Model{Name: md.name, MaxOutputTokens: md.maxOutput.v}
	for _, f := range []struct {
		key string
		v   at[string]
		dst *Price
		req bool
	}{{"input", md.input, &m.Input, true}, {"output", md.output, &m.Output, true},
		{"cached_input", md.cachedInput, &m.CachedInput, false}, {"cache_write", md.cacheWrite, &m.CacheWrite, false},
		{"image", md.image, &m.Image, false}, {"audio", md.audio, &m.Audio, false}} {
		switch {
		case f.v.missing() && f.req:
			c.add(md.file, md.line, path+"."+f.key, "is required (a price such as \"2.50/1M\")")
		case f.v.set:
			pr, err := ParsePrice(f.v.v)
			if err != nil {
				c.add(md.file, f.v.line, path+"."+f.key, "%v", err)
			}
			*f.dst = pr
		}
	}
	if md.cachedInput.missing() {
		m.CachedInput = m.Input // no discount stated: cached tokens cost full price
	}
	if md.cacheWrite.missing() {
		m.CacheWrite = m.Input // no surcharge stated: cache writes cost the input price
	}
	if md.maxOutput.set && md.maxOutput.v <= 0 {
		c.add(md.file, md.maxOutput.line, path+".max_output_tokens", "must be positive, got %d", md.maxOutput.v)
	}
	return m
}

// defaults reads the defaults blocks over the built-in answers. Each setting
// may be given once across the files.
func (c *compiler) defaults(docs []defaultsDoc) {
	c.set.Defaults = Defaults{UnmatchedRoute: Allow, InvalidRequest: Deny, StoreUnavailable: Deny, Location: time.UTC, ReservationTTL: DefaultReservationTTL, Reservation: Conservative,
		Adaptive: DefaultAdaptive()}
	once := newOnceOnly(&c.errList, "defaults")
	for _, d := range docs {
		c.defaultsBlock(d, once)
	}
}

func (c *compiler) defaultsBlock(d defaultsDoc, once *onceOnly) {
	out := &c.set.Defaults
	if d.unknownClient.set && once.first(d.file, d.unknownClient.line, "unknown_client") && d.unknownClient.v != string(Deny) {
		if t, ok := c.set.Tiers[d.unknownClient.v]; ok {
			out.UnknownClientTier = t
		} else {
			c.add(d.file, d.unknownClient.line, "defaults.unknown_client", "must be a tier name or \"deny\"; tier %q does not exist%s", d.unknownClient.v, known(c.set.Tiers))
		}
	}
	for _, a := range []struct {
		key string
		v   at[string]
		dst *Action
	}{{"unmatched_route", d.unmatchedRoute, &out.UnmatchedRoute}, {"invalid_request", d.invalidReqest, &out.InvalidRequest}} {
		if !a.v.set || !once.first(d.file, a.v.line, a.key) {
			continue
		}
		if act := Action(a.v.v); act == Allow || act == Deny {
			*a.dst = act
		} else {
			c.add(d.file, a.v.line, "defaults."+a.key, "must be \"allow\" or \"deny\", got %q", a.v.v)
		}
	}
	if d.shadow.set && once.first(d.file, d.shadow.line, "shadow") {
		out.Shadow = d.shadow.v
	}
	if d.storeUnavailable.set && once.first(d.file, d.storeUnavailable.line, "store_unavailable") {
		if act := Action(d.storeUnavailable.v); act == Allow || act == Deny {
			out.StoreUnavailable = act
		} else {
			c.add(d.file, d.storeUnavailable.line, "defaults.store_unavailable", "must be \"allow\" (fail open) or \"deny\" (fail closed), got %q", d.storeUnavailable.v)
		}
	}
	if d.timezone.set && once.first(d.file, d.timezone.line, "timezone") {
		if loc, err := time.LoadLocation(d.timezone.v); err != nil || d.timezone.v == "" {
			c.add(d.file, d.timezone.line, "defaults.timezone", "unknown time zone %q (an IANA name such as UTC or America/New_York)", d.timezone.v)
		} else {
			out.Location = loc
		}
	}
	if d.reservation.set && once.first(d.file, d.reservation.line, "reservation") {
		if st := Strategy(d.reservation.v); slices.Contains(strategies, st) {
			out.Reservation = st
		} else {
			c.add(d.file, d.reservation.line, "defaults.reservation", "unknown strategy %q (one of %s)", d.reservation.v, joinNames(strategies))
		}
	}
	if a := d.adaptive; a != nil && once.first(d.file, a.line, "adaptive") {
		out.Adaptive = c.adaptive(d.file, a)
	}
	if d.reservationTTL.set && once.first(d.file, d.reservationTTL.line, "reservation_ttl") {
		c.reservationTTL(d.file, d.reservationTTL)
	}
}

func (c *compiler) reservationTTL(file string, v at[string]) {
	ttl, err := time.ParseDuration(v.v)
	switch {
	case err != nil:
		c.add(file, v.line, "defaults.reservation_ttl", "must be a duration such as 10m or 90s, got %q", v.v)
	case ttl < time.Second || ttl > 24*time.Hour:
		c.add(file, v.line, "defaults.reservation_ttl", "must be between 1s and 24h, got %v", ttl)
	default:
		c.set.Defaults.ReservationTTL = ttl
	}
}

// queue reads the queue blocks over DefaultQueue. Each setting may be given
// once across the files; windows are in their own time zone, else the
// policy's, so this runs after defaults.
func (c *compiler) queue(qs []queueDoc) {
	out := DefaultQueue()
	once := newOnceOnly(&c.errList, "queue")
	for _, q := range qs {
		if q.header.set && once.first(q.file, q.header.line, "priority_header") {
			h := strings.ToLower(q.header.v)
			if h == "" || strings.ContainsAny(h, " :") {
				c.add(q.file, q.header.line, "queue.priority_header", "must be a header name, got %q", q.header.v)
			} else {
				out.PriorityHeader = h
			}
		}
		c.queueDuration(once, q.file, "wait_horizon", q.horizon, time.Second, 24*time.Hour, &out.WaitHorizon)
		c.queueDuration(once, q.file, "fairness_window", q.fairness, time.Second, 24*time.Hour, &out.FairnessWindow)
		c.queueDuration(once, q.file, "starvation_alert", q.starvation, time.Second, 7*24*time.Hour, &out.StarvationAlert)
		for _, cd := range q.classes {
			c.queueClass(once, q.file, cd, &out)
		}
		if q.windowsAt > 0 && once.first(q.file, q.windowsAt, "off_peak") {
			for i, w := range q.windows {
				out.Windows = append(out.Windows, c.window(q.file, fmt.Sprintf("queue.off_peak[%d]", i), w))
			}
		}
	}
	c.set.Queue = out
}

// queueDuration reads one of the queue's durations into dst, within [lo, hi].
func (c *compiler) queueDuration(once *onceOnly, file, key string, v at[string], lo, hi time.Duration, dst *time.Duration) {
	if !v.set || !once.first(file, v.line, key) {
		return
	}
	d, err := time.ParseDuration(v.v)
	switch {
	case err != nil:
		c.add(file, v.line, "queue."+key, "must be a duration such as 10s or 5m, got %q", v.v)
	case d < lo || d > hi:
		c.add(file, v.line, "queue."+key, "must be between %v and %v, got %v", lo, hi, d)
	default:
		*dst = d
	}
}

func (c *compiler) queueClass(once *onceOnly, file string, cd classDoc, out *Queue) {
	path := "queue.classes." + cd.name
	cls, ok := ParseClass(cd.name)
	if !ok {
		c.add(file, cd.line, path, "unknown class %q (one of %s)", cd.name, strings.Join(classNames[:], ", "))
		return
	}
	if !once.first(file, cd.line, "classes."+cd.name) {
		return
	}
	cp := &out.Classes[cls]
	if cd.maxWait.set {
		d, err := time.ParseDuration(cd.maxWait.v)
		switch {
		case err != nil:
			c.add(file, cd.maxWait.line, path+".max_wait", "must be a duration such as 10s, got %q", cd.maxWait.v)
		case cls == Immediate && d != 0:
			c.add(file, cd.maxWait.line, path+".max_wait", "an immediate call is never held; it must be 0")
		case d < 0 || d > 24*time.Hour:
			c.add(file, cd.maxWait.line, path+".max_wait", "must be between 0s and 24h, got %v", d)
		default:
			cp.MaxWait = d
		}
	}
	if cd.maxDepth.set {
		if cd.maxDepth.v < 0 || cd.maxDepth.v > 10_000_000 {
			c.add(file, cd.maxDepth.line, path+".max_depth", "must be between 0 and 10000000, got %d", cd.maxDepth.v)
		} else {
			cp.MaxDepth = int(cd.maxDepth.v)
		}
	}
	if cd.urgency.set {
		if cd.urgency.v < 0 || cd.urgency.v > 30 {
			c.add(file, cd.urgency.line, path+".urgency", "must be between 0 and 30 points, got %d", cd.urgency.v)
		} else {
			cp.Urgency = int(cd.urgency.v)
		}
	}
}

// window compiles one off-peak window, in the policy's time zone unless it
// names its own.
func (c *compiler) window(file, path string, w windowDoc) Window {
	win := Window{Location: c.set.Defaults.Location}
	for _, f := range []struct {
		key string
		v   at[string]
		dst *time.Duration
	}{{"start", w.start, &win.Start}, {"end", w.end, &win.End}} {
		if !f.v.set {
			c.add(file, w.line, path+"."+f.key, "is required (a time of day such as \"22:00\")")
			continue
		}
		d, err := parseClock(f.v.v)
		if err != nil {
			c.add(file, f.v.line, path+"."+f.key, "%v", err)
		}
		*f.dst = d
	}
	if w.start.set && win.Start == 24*time.Hour {
		c.add(file, w.start.line, path+".start", "a window cannot start at 24:00")
	}
	if w.zone.set {
		if l, err := time.LoadLocation(w.zone.v); err != nil || w.zone.v == "" {
			c.add(file, w.zone.line, path+".timezone", "unknown time zone %q (an IANA name such as UTC or Europe/Berlin)", w.zone.v)
		} else {
			win.Location = l
		}
	}
	for _, day := range w.days.v {
		wd, ok := weekdays[strings.ToLower(strings.TrimSpace(day))]
		if !ok {
			c.add(file, w.days.line, path+".days", "unknown day %q (mon, tue, wed, thu, fri, sat, sun)", day)
			continue
		}
		win.Days[wd] = true
	}
	return win
}

// adaptive reads defaults.adaptive over DefaultAdaptive.
func (c *compiler) adaptive(file string, a *adaptiveDoc) AdaptiveConfig {
	out := DefaultAdaptive()
	for _, f := range []struct {
		key      string
		v        at[int64]
		dst      *int64
		min, max int64
	}{
		{"percentile", a.percentile, &out.Percentile, 1, 100},
		{"min_percent", a.minPercent, &out.MinPercent, 1, 1000},
		{"max_percent", a.maxPercent, &out.MaxPercent, 1, 1000},
		{"window", a.window, &out.Window, 1, 100_000},
		{"min_samples", a.warmup, &out.MinSamples, 0, 100_000},
	} {
		if !f.v.set {
			continue
		}
		if f.v.v < f.min || f.v.v > f.max {
			c.add(file, f.v.line, "defaults.adaptive."+f.key, "must be between %d and %d, got %d", f.min, f.max, f.v.v)
			continue
		}
		*f.dst = f.v.v
	}
	if out.MinPercent > out.MaxPercent {
		c.add(file, a.line, "defaults.adaptive", "min_percent (%d) is above max_percent (%d)", out.MinPercent, out.MaxPercent)
	}
	if out.MinSamples > out.Window {
		c.add(file, a.line, "defaults.adaptive", "min_samples (%d) is above window (%d): it would never learn", out.MinSamples, out.Window)
	}
	return out
}

// limit checks a bucket's shape (a pool's, or a tier's limit per client);
// line is the owner's, for a field that is missing.
func (c *compiler) limit(file string, line int, path string, capacity, refill at[int64]) Limit {
	for _, f := range []struct {
		key string
		v   at[int64]
	}{{"capacity", capacity}, {"refill_per_second", refill}} {
		switch {
		case f.v.bad:
		case !f.v.set:
			c.add(file, line, path+"."+f.key, "is required")
		case f.v.v <= 0:
			c.add(file, f.v.line, path+"."+f.key, "must be positive, got %d", f.v.v)
		case f.v.v > MaxCapacity:
			c.add(file, f.v.line, path+"."+f.key, "must be at most %d, got %d", MaxCapacity, f.v.v)
		}
	}
	return Limit{Capacity: capacity.v, RefillPerSecond: refill.v}
}

func sortRoutes(rs []*Route) {
	hostRank := func(h string) int {
		switch {
		case h == "":
			return 0
		case strings.HasPrefix(h, "*."):
			return 1
		}
		return 2
	}
	sort.SliceStable(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if ha, hb := hostRank(a.Host), hostRank(b.Host); ha != hb {
			return ha > hb
		}
		if len(a.PathPrefix) != len(b.PathPrefix) {
			return len(a.PathPrefix) > len(b.PathPrefix)
		}
		if (len(a.Models) > 0) != (len(b.Models) > 0) {
			return len(a.Models) > 0
		}
		return a.Name < b.Name
	})
}

func joinNames[T ~string](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = string(x)
	}
	return strings.Join(s, ", ")
}

func known[T any](m map[string]T) string {
	if len(m) == 0 {
		return " (none are defined)"
	}
	return " (known: " + strings.Join(sortedKeys(m), ", ") + ")"
}

// checkHost explains what is wrong with a route's host pattern, or returns "".
func checkHost(h string) string {
	if h == "" {
		return ""
	}
	if ip := strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"); net.ParseIP(ip) != nil {
		return ""
	}
	const want = "must be a host name, \"*.domain\" or empty for any host"
	rest := strings.TrimPrefix(h, "*.")
	switch {
	case strings.ContainsAny(h, "/ []") || strings.Contains(rest, "*") || strings.Trim(rest, ".") == "" ||
		strings.HasPrefix(rest, ".") || strings.Contains(h, ".."):
		return want
	case strings.Contains(h, ":"):
		return "must not include a port (requests are matched on the host name alone)"
	}
	return ""
}
