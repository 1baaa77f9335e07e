package cluster

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/memberlist"
)

// Gossip key rotation. A key file holds base64 keys, one a line, the first
// the primary: the one this member encrypts with. Every key of the file
// decrypts. A fleet rotates its key in three rewrites of every member's file,
// each rolled out to the whole fleet before the next:
//
//  1. "old\nnew": every member learns the new key, still encrypting with old;
//  2. "new\nold": members switch to the new key one by one; the others still
//     read it, and still send old, which everyone still reads;
//  3. "new": the old key goes, once no member sends with it.
//
// A reload installs the file's keys first, then switches the primary, then
// removes the keys the file no longer names, so that no reload ever leaves a
// member unable to read what another sends under a key both files hold.

// MaxKeys bounds a key file: a rotation needs two keys, a few more spare.
const MaxKeys = 8

// ParseKeys reads a key file: base64 keys of 16, 24 or 32 bytes, one a
// line, the first the primary. Blank lines and lines starting with # are
// skipped; a key named twice is refused, as is a file without a key.
func ParseKeys(text []byte) ([][]byte, error) {
	var keys [][]byte
	var errs []error
	for i, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: not base64", i+1)) // never echo a key
			continue
		}
		if err := memberlist.ValidateKey(k); err != nil {
			errs = append(errs, fmt.Errorf("line %d: a key of %d bytes: want 16, 24 or 32", i+1, len(k)))
			continue
		}
		for _, o := range keys {
			if bytes.Equal(o, k) {
				errs = append(errs, fmt.Errorf("line %d: a key named twice", i+1))
			}
		}
		keys = append(keys, k)
	}
	if len(keys) > MaxKeys {
		errs = append(errs, fmt.Errorf("%d keys: at most %d", len(keys), MaxKeys))
	}
	if len(keys) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("no key"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("cluster: gossip key file: %w", err)
	}
	return keys, nil
}

// Keys returns the keys gossip is read with, the primary first.
func (n *Node) Keys() [][]byte {
	ring := n.ring
	if ring == nil {
		return nil
	}
	p := ring.GetPrimaryKey()
	out := [][]byte{p}
	for _, k := range ring.GetKeys() {
		if !bytes.Equal(k, p) {
			out = append(out, k)
		}
	}
	return out
}

// SetKeys makes keys (the primary first) the keys of this member's gossip:
// it installs the new ones, switches to the primary, then removes the keys
// no longer named, in that order (see the rotation above).
func (n *Node) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("cluster: no gossip key")
	}
	for _, k := range keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return fmt.Errorf("cluster: gossip key: %w", err)
		}
	}
	n.keyMu.Lock()
	defer n.keyMu.Unlock()
	ring := n.ring
	for _, k := range keys {
		if err := ring.AddKey(k); err != nil { // a key already there is left as is
			return fmt.Errorf("cluster: install a gossip key: %w", err)
		}
	}
	if err := ring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("cluster: use the primary gossip key: %w", err)
	}
	// A copy: RemoveKey shifts the keyring's own slice, which GetKeys
	// returns, so a walk over it would skip the key after each removed one.
	for _, k := range slices.Clone(ring.GetKeys()) {
		named := false
		for _, w := range keys {
			named = named || bytes.Equal(k, w)
		}
		if !named {
			if err := ring.RemoveKey(k); err != nil {
				return fmt.Errorf("cluster: remove a gossip key: %w", err)
			}
		}
	}
	return nil
}

// KeyWatcher reloads a member's gossip keys from a file when it changes
// (fsnotify on its directory, so a Kubernetes Secret's symlink swap is
// seen too) and on Reload. A file that does not parse is logged and the
// keys in force stay.
type KeyWatcher struct {
	path string
	node *Node
	log  *slog.Logger
	fsw  *fsnotify.Watcher
	mu   sync.Mutex // one reload at a time
	last []byte     // the file's content last applied
}

// WatchKeys loads path into node's keyring now and returns a watcher that
// Run keeps applying.
func WatchKeys(path string, node *Node, log *slog.Logger) (*KeyWatcher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &KeyWatcher{path: path, node: node, log: log.With(slog.String("component", "cluster"))}
	if err := w.Reload(); err != nil {
		return nil, err
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("cluster: watch the gossip key file: %w", err)
	}
	if err := fsw.Add(filepath.Dir(path)); err != nil {
		return nil, errors.Join(fmt.Errorf("cluster: watch the gossip key file: %w", err), fsw.Close())
	}
	w.fsw = fsw
	return w, nil
}

// Reload reads the file and installs its keys when it changed.
func (w *KeyWatcher) Reload() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, err := os.ReadFile(w.path)
	if err != nil {
		return fmt.Errorf("cluster: gossip key file: %w", err)
	}
	if w.last != nil && bytes.Equal(b, w.last) {
		return nil
	}
	keys, err := ParseKeys(b)
	if err != nil {
		return err
	}
	if err := w.node.SetKeys(keys); err != nil {
		return err
	}
	w.last = b
	w.log.Info("gossip keys loaded", slog.Int("keys", len(keys)))
	return nil
}

// Close stops watching (Run also does when it returns); closing twice is
// harmless.
func (w *KeyWatcher) Close() error { return w.fsw.Close() }

// Run applies the file's changes until ctx ends, then stops watching.
func (w *KeyWatcher) Run(ctx context.Context) error {
	defer w.fsw.Close()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.fsw.Events:
			if !ok {
				return nil
			}
			debounce = time.After(100 * time.Millisecond) // an editor's or a Secret's burst of events is one change
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return nil
			}
			w.log.Warn("watching the gossip key file", slog.Any("error", err))
		case <-debounce:
			debounce = nil
			if err := w.Reload(); err != nil {
				w.log.Error("gossip key reload failed; the keys in force stay", slog.Any("error", err))
			}
		}
	}
}
