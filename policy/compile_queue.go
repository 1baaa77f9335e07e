package policy

import (
	"fmt"
	"strings"
	"time"
)

// queueDoc is a queue: block as written; several files may each give some
// of its settings.
type queueDoc struct {
	file                                  string
	line                                  int
	header, horizon, fairness, starvation at[string]
	classes                               []classDoc
	windows                               []windowDoc
	windowsAt                             int // line of off_peak, 0 when absent
}

// classDoc is a queue.classes: entry, keyed by class name.
type classDoc struct {
	name              string
	line              int
	maxWait           at[string]
	maxDepth, urgency at[int64]
}

// windowDoc is one item of queue.off_peak.
type windowDoc struct {
	line             int
	start, end, zone at[string]
	days             at[[]string]
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

// queue reads the queue blocks over DefaultQueue. Each setting may be given
// once across the files; windows are in their own time zone, else the
// policy's, so this runs after defaults.
func (c *compiler) queue(qs []queueDoc) {
	out := DefaultQueue()
	once := newOnceOnly(&c.errList, "queue")
	for _, q := range qs {
		if setOnce(once, q.file, "priority_header", q.header) {
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
	if !setOnce(once, file, key, v) {
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

// queueClass compiles one class's policy over its default; a class may be
// given once across the files.
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
		c.maxWait(file, path+".max_wait", cls, cd.maxWait, &cp.MaxWait)
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

// maxWait reads how long a class may be held into dst; an immediate call is
// never held.
func (c *compiler) maxWait(file, path string, cls Class, v at[string], dst *time.Duration) {
	d, err := time.ParseDuration(v.v)
	switch {
	case err != nil:
		c.add(file, v.line, path, "must be a duration such as 10s, got %q", v.v)
	case cls == Immediate && d != 0:
		c.add(file, v.line, path, "an immediate call is never held; it must be 0")
	case d < 0 || d > 24*time.Hour:
		c.add(file, v.line, path, "must be between 0s and 24h, got %v", d)
	default:
		*dst = d
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
