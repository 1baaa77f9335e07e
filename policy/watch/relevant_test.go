package watch

import (
	"testing"

	"github.com/fsnotify/fsnotify"
	"github.com/stretchr/testify/assert"
)

// relevant decides which events start a reload; the watcher tests cannot
// show that an event was ignored without waiting, so it is tested here.
func TestRelevant(t *testing.T) {
	tests := map[string]struct {
		ev   fsnotify.Event
		want bool
	}{
		"write yaml":            {ev: fsnotify.Event{Name: "/p/policy.yaml", Op: fsnotify.Write}, want: true},
		"create yml":            {ev: fsnotify.Event{Name: "/p/policy.yml", Op: fsnotify.Create}, want: true},
		"remove yaml":           {ev: fsnotify.Event{Name: "/p/policy.yaml", Op: fsnotify.Remove}, want: true},
		"rename yaml away":      {ev: fsnotify.Event{Name: "/p/policy.yaml", Op: fsnotify.Rename}, want: true},
		"configmap data swap":   {ev: fsnotify.Event{Name: "/p/..data", Op: fsnotify.Create}, want: true},
		"chmod and write":       {ev: fsnotify.Event{Name: "/p/policy.yaml", Op: fsnotify.Chmod | fsnotify.Write}, want: true},
		"chmod only":            {ev: fsnotify.Event{Name: "/p/policy.yaml", Op: fsnotify.Chmod}, want: false},
		"editor temp file":      {ev: fsnotify.Event{Name: "/p/.policy.yaml.swp", Op: fsnotify.Write}, want: false},
		"temp file before move": {ev: fsnotify.Event{Name: "/p/.policy.yaml.tmp", Op: fsnotify.Create}, want: false},
		"other file":            {ev: fsnotify.Event{Name: "/p/notes.txt", Op: fsnotify.Write}, want: false},
		"yaml in the dir name":  {ev: fsnotify.Event{Name: "/p.yaml/notes", Op: fsnotify.Write}, want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, relevant(tc.ev))
		})
	}
}
