// Package watch keeps the policy in force current: it reloads the policy
// files when they change and swaps a newly compiled Set in atomically. A
// policy that fails to compile is logged and counted, and the old one stays.
package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate/tollgate/internal/metricset"
	"github.com/tollgate/tollgate/policy"
)

// Config configures a Watcher.
type Config struct {
	// Path is a policy file or directory.
	Path string
	// Debounce gathers the bursts of events an editor or a ConfigMap update
	// makes into one reload.
	Debounce time.Duration
}

// DefaultConfig returns a Config for path.
func DefaultConfig(path string) Config { return Config{Path: path, Debounce: 250 * time.Millisecond} }

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if c.Path == "" {
		return errors.New("watch: policy path is empty")
	}
	if c.Debounce < 0 {
		return fmt.Errorf("watch: debounce %v is negative", c.Debounce)
	}
	return nil
}

type metrics struct {
	reloads     *prometheus.CounterVec
	lastSuccess prometheus.Gauge
}

// Watcher holds the policy in force and reloads it on change.
type Watcher struct {
	cfg     Config
	log     *slog.Logger
	current atomic.Pointer[policy.Set]
	m       metrics
	fsw     *fsnotify.Watcher
	reload  sync.Mutex // one reload at a time, so an older Set never lands last
}

// New loads the policy at cfg.Path (failing if it is invalid: a server must
// not start on a broken policy) and starts watching it.
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Watcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var f metricset.Set
	w := &Watcher{cfg: cfg, log: log, m: metrics{
		reloads: f.CounterVec(prometheus.CounterOpts{
			Name: "tollgate_policy_reloads_total",
			Help: "Policy reloads after a file change, by result (success, failure).",
		}, []string{"result"}),
		lastSuccess: f.Gauge(prometheus.GaugeOpts{
			Name: "tollgate_policy_last_reload_success_timestamp_seconds",
			Help: "When the policy in force was loaded.",
		}),
	}}
	w.m.reloads.WithLabelValues("success")
	w.m.reloads.WithLabelValues("failure")
	if err := f.Register("watch", reg); err != nil {
		return nil, err
	}
	w, err := w.start()
	if err != nil {
		f.Unregister(reg)
	}
	return w, err
}

// start watches the policy's directories and loads it.
func (w *Watcher) start() (*Watcher, error) {
	cfg := w.cfg
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	// Watch before the first load, so that a change made meanwhile is not
	// missed. Watch directories, not files: editors and Kubernetes
	// ConfigMaps replace files by renaming, which drops a watch on the file.
	dirs, err := watchDirs(cfg.Path)
	if err == nil {
		for _, d := range dirs {
			if err = fsw.Add(d); err != nil {
				break
			}
		}
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("watch: %w", err), fsw.Close())
	}
	set, err := policy.Load(cfg.Path)
	if err != nil {
		return nil, errors.Join(err, fsw.Close())
	}
	w.swap(set)
	w.fsw = fsw
	return w, nil
}

// Policy returns the policy in force. It is safe for concurrent use.
func (w *Watcher) Policy() *policy.Set { return w.current.Load() }

func (w *Watcher) swap(s *policy.Set) {
	w.current.Store(s)
	w.m.lastSuccess.Set(float64(s.LoadedAt.UnixNano()) / 1e9)
}

// Reload recompiles the policy now. On failure the old policy stays in
// force and the error is returned (and logged, and counted).
func (w *Watcher) Reload() error {
	w.reload.Lock()
	defer w.reload.Unlock()
	set, err := policy.Load(w.cfg.Path)
	if err != nil {
		w.m.reloads.WithLabelValues("failure").Inc()
		w.log.Error("policy reload failed; the previous policy stays in force", slog.String("policy", w.cfg.Path), slog.Any("error", err))
		return err
	}
	w.swap(set)
	w.m.reloads.WithLabelValues("success").Inc()
	w.log.Info("policy reloaded", slog.String("policy", w.cfg.Path), slog.Int("pools", len(set.Pools)),
		slog.Int("routes", len(set.Routes)), slog.Int("tiers", len(set.Tiers)), slog.Int("clients", len(set.Clients)))
	return nil
}

// Run reloads on change until ctx ends, then releases the watch.
func (w *Watcher) Run(ctx context.Context) error {
	defer w.fsw.Close()
	var timer *time.Timer
	var fire <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return nil
			}
			if !relevant(ev) {
				continue
			}
			if timer == nil {
				timer = time.NewTimer(w.cfg.Debounce)
			} else {
				timer.Reset(w.cfg.Debounce)
			}
			fire = timer.C
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return nil
			}
			w.log.Warn("policy watch error", slog.Any("error", err))
		case <-fire:
			fire = nil
			_ = w.Reload() // logged and counted inside
		}
	}
}

func relevant(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	base := filepath.Base(ev.Name)
	ext := filepath.Ext(base)
	// ConfigMap updates swap a "..data" symlink; editors write temp files.
	return ext == ".yaml" || ext == ".yml" || base == "..data"
}

func watchDirs(path string) ([]string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return []string{filepath.Dir(path)}, nil
	}
	var dirs []string
	err = filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != path && len(d.Name()) > 0 && d.Name()[0] == '.' && d.Name() != "..data" {
				return filepath.SkipDir
			}
			dirs = append(dirs, p)
		}
		return nil
	})
	return dirs, err
}
