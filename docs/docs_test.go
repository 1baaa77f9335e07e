// Package docs holds Tollgate's reference pages. Its tests keep them honest:
// the README stays a short front door and every relative link leads
// somewhere. (The metrics table in operations.md is checked against the
// live registry of `tollgate serve`, in cmd/tollgate.)
package docs

import (
	"bufio"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests run in docs/; the repository root is one up.
const root = ".."

const maxReadmeLines = 200

func TestReadmeIsShort(t *testing.T) {
	lines := readLines(t, filepath.Join(root, "README.md"))
	assert.LessOrEqual(t, len(lines), maxReadmeLines,
		"README.md is a front door of at most %d lines; move reference to docs/", maxReadmeLines)
}

// pages are the Markdown files whose links are checked: the README and
// every page in docs/.
func pages(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	require.NoError(t, err)
	require.NotEmpty(t, docs, "no pages in docs/")
	return append([]string{filepath.Join(root, "README.md")}, docs...)
}

func TestReadmeLinksEveryPage(t *testing.T) {
	readme := filepath.Join(root, "README.md")
	linked := map[string]bool{}
	for _, l := range links(t, readme) {
		path, _, _ := strings.Cut(l.target, "#")
		if path != "" {
			linked[filepath.Clean(filepath.Join(filepath.Dir(readme), path))] = true
		}
	}
	for _, p := range pages(t)[1:] {
		assert.True(t, linked[filepath.Clean(p)], "README.md does not link %s", p)
	}
}

func TestRelativeLinksResolve(t *testing.T) {
	for _, page := range pages(t) {
		t.Run(filepath.Base(page), func(t *testing.T) {
			for _, l := range links(t, page) {
				if isExternal(l.target) {
					continue
				}
				path, anchor, _ := strings.Cut(l.target, "#")
				dest := page
				if path != "" {
					dest = filepath.Join(filepath.Dir(page), path)
					_, err := os.Stat(dest)
					if !assert.NoError(t, err, "%s:%d: link %q: no such file", page, l.line, l.target) {
						continue
					}
				}
				if anchor == "" {
					continue
				}
				if !assert.True(t, strings.HasSuffix(dest, ".md"), "%s:%d: link %q: an anchor into a file that is not Markdown", page, l.line, l.target) {
					continue
				}
				assert.Contains(t, headingAnchors(t, dest), anchor, "%s:%d: link %q: no heading with that anchor", page, l.line, l.target)
			}
		})
	}
}

func TestSlug(t *testing.T) {
	tests := map[string]struct{ heading, want string }{
		"words":       {"Health and readiness", "health-and-readiness"},
		"colon":       {"Answers: headers and denials", "answers-headers-and-denials"},
		"code":        {"`tollgate load`", "tollgate-load"},
		"path":        {"`/api/cluster`", "apicluster"},
		"parentheses": {"Against the bare server (make bench-floor)", "against-the-bare-server-make-bench-floor"},
		"underscore":  {"The `tollgate_x` metric", "the-tollgate_x-metric"},
		"accents":     {"Café crème", "café-crème"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, slug(tc.heading))
		})
	}
}

// link is one Markdown inline link.
type link struct {
	target string
	line   int
}

var inlineLink = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
var inlineCode = regexp.MustCompile("`[^`]*`")

// links returns the inline links of a Markdown file, outside code.
func links(t *testing.T, path string) []link {
	t.Helper()
	var out []link
	fenced := false
	for i, l := range readLines(t, path) {
		if isFence(l) {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		for _, m := range inlineLink.FindAllStringSubmatch(inlineCode.ReplaceAllString(l, ""), -1) {
			out = append(out, link{target: strings.Trim(m[1], "<>"), line: i + 1})
		}
	}
	return out
}

func isFence(line string) bool {
	s := strings.TrimSpace(line)
	return strings.HasPrefix(s, "```") || strings.HasPrefix(s, "~~~")
}

func isExternal(target string) bool {
	for _, p := range []string{"http://", "https://", "mailto:"} {
		if strings.HasPrefix(target, p) {
			return true
		}
	}
	return false
}

// headingAnchors returns the anchors GitHub gives the headings of a
// Markdown file, repeats numbered as GitHub numbers them.
func headingAnchors(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	seen := map[string]int{}
	fenced := false
	for _, l := range readLines(t, path) {
		if isFence(l) {
			fenced = !fenced
			continue
		}
		if fenced || !strings.HasPrefix(l, "#") {
			continue
		}
		text := strings.TrimLeft(l, "#")
		if len(l)-len(text) > 6 || (text != "" && text[0] != ' ') {
			continue // not an ATX heading
		}
		s := slug(strings.TrimSpace(text))
		if n := seen[s]; n > 0 {
			out = append(out, s+"-"+strconv.Itoa(n))
		} else {
			out = append(out, s)
		}
		seen[s]++
	}
	return out
}

// slug is GitHub's heading anchor: lower case, spaces as hyphens, every
// character that is not a letter, digit, mark, hyphen or underscore
// dropped.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer func() { require.NoError(t, f.Close()) }()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	require.NoError(t, sc.Err(), path)
	return lines
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
