package policy

import (
	"fmt"
	"strings"
	"time"
)

type queueDoc struct {
	file                                  string
	line                                  int
	header, horizon, fairness, starvation at[string]
	classes                               []classDoc
	windows                               []windowDoc
	windowsAt                             int // line of off_peak, 0 when absent
}

type classDoc struct {
	name              string
	line              int
	maxWait           at[string]
	maxDepth, urgency at[int64]
}

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
