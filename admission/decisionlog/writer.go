package decisionlog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/internal/metricset"
)

// Config configures a Writer.
type Config struct {
	// Buffer is how many records wait for the writer at most; a record
	// that finds it full is dropped and counted, never waited for.
	Buffer int
	// MaxBytes rotates the file when writing a line would take it past
	// this size: FILE becomes FILE.1 (replacing an older one) and a new
	// FILE starts. Zero never rotates.
	MaxBytes int64
	// Policy names the policy in force, written on the start line of
	// each file (replay's default base policy); Settlement is serve's
	// --settle (a replay settles the same way).
	Policy     string
	Settlement string
}

// DefaultConfig buffers 8192 records and rotates at 256 MiB.
func DefaultConfig() Config { return Config{Buffer: 8192, MaxBytes: 256 << 20} }

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	var errs []error
	if c.Buffer < 1 {
		errs = append(errs, fmt.Errorf("decision log buffer %d: want ≥ 1", c.Buffer))
	}
	if c.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("decision log max bytes %d: want ≥ 0 (0: never rotate)", c.MaxBytes))
	}
	return errors.Join(errs...)
}

// Writer is an admission.DecisionLog that writes JSON lines from one
// goroutine of its own. Decision and Settled never block: a record goes
// into a bounded channel or is dropped (tollgate_decision_log_dropped_total).
// The goroutine encodes records, buffers them, and flushes whenever the
// channel runs dry, so a burst is one write. Close drains and flushes.
type Writer struct {
	cfg  Config
	ch   chan item
	mu   sync.RWMutex // guards closed against a send on a closed channel
	done chan struct{}
	log  *slog.Logger
	m    writerMetrics

	// Set by Open: the file, reopened at rotation.
	path string
	file *os.File
	size int64

	buf  *bufio.Writer
	err  error // the first write error, returned by Close
	shut bool
}

var _ admission.DecisionLog = (*Writer)(nil)

type writerMetrics struct {
	written   *prometheus.CounterVec
	dropped   prometheus.Counter
	errors    prometheus.Counter
	rotations prometheus.Counter
}

// newWriterMetrics registers the writer's metrics, all or none.
func newWriterMetrics(reg prometheus.Registerer) (writerMetrics, error) {
	var set metricset.Set
	m := writerMetrics{
		written: set.CounterVec(prometheus.CounterOpts{Name: "tollgate_decision_log_written_total",
			Help: "Lines written to the decision log, by kind (decision, settle)."}, []string{"kind"}),
		dropped: set.Counter(prometheus.CounterOpts{Name: "tollgate_decision_log_dropped_total",
			Help: "Decision log records dropped because the writer's buffer was full."}),
		errors: set.Counter(prometheus.CounterOpts{Name: "tollgate_decision_log_write_errors_total",
			Help: "Failed writes, flushes or rotations of the decision log (the lines are lost)."}),
		rotations: set.Counter(prometheus.CounterOpts{Name: "tollgate_decision_log_rotations_total",
			Help: "Times the decision log reached its size and was rotated to FILE.1."}),
	}
	return m, set.Register("decision log", reg)
}

// Open appends to the file at path (creating it, mode 0600: the log names
// clients and their spend) and starts the writer.
func Open(path string, cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newWriterMetrics(reg)
	if err != nil {
		return nil, err
	}
	f, size, err := openFile(path)
	if err != nil {
		return nil, err
	}
	w := start(f, cfg, m, log)
	w.path, w.file, w.size = path, f, size
	w.ch <- item{start: true}
	return w, nil
}

// New starts a writer to out (the caller closes out after Close), which
// never rotates.
func New(out io.Writer, cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.MaxBytes = 0
	m, err := newWriterMetrics(reg)
	if err != nil {
		return nil, err
	}
	w := start(out, cfg, m, log)
	w.ch <- item{start: true}
	return w, nil
}

func start(out io.Writer, cfg Config, m writerMetrics, log *slog.Logger) *Writer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Writer{cfg: cfg, ch: make(chan item, cfg.Buffer), done: make(chan struct{}), log: log,
		m: m, buf: bufio.NewWriterSize(out, 64<<10)}
	go w.run()
	return w
}

func (w *Writer) startLine() Line {
	return Line{V: Version, Kind: KindStart, Time: nowUTC(), Policy: w.cfg.Policy, Settlement: w.cfg.Settlement}
}

func openFile(path string) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("decision log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, 0, errors.Join(fmt.Errorf("decision log: %w", err), f.Close())
	}
	return f, st.Size(), nil
}

// item is one record on its way to the writer's goroutine, which turns it
// into a Line (off the request path).
type item struct {
	d     *admission.DecisionRecord
	s     *admission.SettleRecord
	start bool // a start line
}

func (w *Writer) lineOf(it item) Line {
	switch {
	case it.d != nil:
		return decisionLine(*it.d)
	case it.s != nil:
		return settleLine(*it.s)
	}
	return w.startLine()
}

// Decision queues a decision; it never blocks.
func (w *Writer) Decision(rec admission.DecisionRecord) { w.send(item{d: &rec}) }

// Settled queues a settle; it never blocks.
func (w *Writer) Settled(rec admission.SettleRecord) { w.send(item{s: &rec}) }

func (w *Writer) send(l item) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.shut {
		w.m.dropped.Inc()
		return
	}
	select {
	case w.ch <- l:
	default:
		w.m.dropped.Inc()
	}
}

// Close stops taking records, writes those queued, flushes and closes the
// file (not an io.Writer given to New). It returns the first write error.
// It is idempotent.
func (w *Writer) Close() error {
	w.mu.Lock()
	if !w.shut {
		w.shut = true
		close(w.ch)
	}
	w.mu.Unlock()
	<-w.done
	return w.err
}

func (w *Writer) run() {
	defer close(w.done)
	var b []byte
	for it := range w.ch {
		l := w.lineOf(it)
		var err error
		if b, err = appendLine(b[:0], &l); err != nil {
			w.fail(fmt.Errorf("decision log: encode: %w", err))
			continue
		}
		w.rotate(int64(len(b)))
		if _, err := w.buf.Write(b); err != nil {
			w.fail(err)
		} else {
			w.size += int64(len(b))
			if l.Kind != KindStart {
				w.m.written.WithLabelValues(l.Kind).Inc()
			}
		}
		if len(w.ch) == 0 { // the burst is over: one write for it
			if err := w.buf.Flush(); err != nil {
				w.fail(err)
			}
		}
	}
	if err := w.buf.Flush(); err != nil {
		w.fail(err)
	}
	if w.file != nil {
		if err := w.file.Close(); err != nil {
			w.fail(err)
		}
	}
}

// rotate starts a new file when n more bytes would pass MaxBytes. After a
// rotation that could not open the new file, it tries again at each line.
func (w *Writer) rotate(n int64) {
	if w.file == nil && w.path != "" {
		if f, size, err := openFile(w.path); err == nil {
			w.file, w.size = f, size
			w.buf.Reset(f)
		}
		return
	}
	if w.file == nil || w.cfg.MaxBytes == 0 || w.size == 0 || w.size+n <= w.cfg.MaxBytes {
		return
	}
	err := errors.Join(w.buf.Flush(), w.file.Close(), os.Rename(w.path, w.path+".1"))
	f, size, oerr := openFile(w.path)
	if err = errors.Join(err, oerr); err != nil {
		w.fail(fmt.Errorf("decision log: rotate: %w", err))
	}
	if oerr != nil { // keep writing nowhere rather than stop: the errors are counted
		w.file = nil
		w.buf.Reset(io.Discard)
		return
	}
	w.file, w.size = f, size
	w.buf.Reset(f)
	w.m.rotations.Inc()
	var b []byte
	s := w.startLine()
	if b, err = appendLine(b, &s); err == nil {
		n, _ := w.buf.Write(b)
		w.size += int64(n)
	}
}

func (w *Writer) fail(err error) {
	w.m.errors.Inc()
	if w.err == nil {
		w.err = err
		w.log.Error("decision log write failed; later failures are only counted", slog.Any("error", err))
	}
}

// nowUTC is the time of a start line; the records carry admission's clock.
func nowUTC() time.Time { return time.Now().UTC() }
