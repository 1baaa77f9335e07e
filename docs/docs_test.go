// Package docs holds Tollgate's reference pages. Its tests keep them honest:
// the README stays a short front door, every relative link leads somewhere,
// and the metrics table in operations.md names exactly the metrics the code
// defines.
package docs

import (
	"bufio"
	"io/fs"
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

// TestMetricsTable holds the metrics table of operations.md to the metrics
// the code defines. definedMetrics is the one place that says what exists;
// replace it (say, with the names a live registry gathers) without touching
// the comparison.
func TestMetricsTable(t *testing.T) {
	documented := metricsTable(t, filepath.Join(root, "docs", "operations.md"))
	defined := definedMetrics(t)
	require.NotEmpty(t, defined, "found no metric definitions in the code")
	compareMetrics(t, documented, defined)
}

// compareMetrics asserts that every defined metric (name → where it is
// defined) has a row and that every row names a defined metric.
func compareMetrics(t *testing.T, documented map[string]metricRow, defined map[string]string) {
	t.Helper()
	for _, name := range sortedKeys(defined) {
		_, ok := documented[name]
		assert.True(t, ok, "metric %s (%s) has no row in docs/operations.md", name, defined[name])
	}
	for _, name := range sortedKeys(documented) {
		_, ok := defined[name]
		assert.True(t, ok, "docs/operations.md has a row for %s, which no code defines", name)
	}
}

// metricRow is one row of the metrics table.
type metricRow struct {
	Type    string
	Labels  []string
	Meaning string
}

const metricsHeader = "| Metric | Type | Labels | Meaning |"

var (
	metricName  = regexp.MustCompile("^`(tollgate_[a-z0-9_]+)`$")
	labelName   = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	metricTypes = []string{"counter", "gauge", "histogram", "summary"}
)

// metricsTable parses the one table under metricsHeader in path, failing
// on a malformed or repeated row.
func metricsTable(t *testing.T, path string) map[string]metricRow {
	t.Helper()
	lines := readLines(t, path)
	start := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == metricsHeader {
			require.Equal(t, -1, start, "%s: more than one metrics table", path)
			start = i
		}
	}
	require.NotEqual(t, -1, start, "%s: no line %q", path, metricsHeader)
	require.Greater(t, len(lines), start+1, "%s: the metrics table has no separator", path)
	require.Regexp(t, `^\|(\s*-+\s*\|){4}$`, strings.TrimSpace(lines[start+1]), "%s:%d: the metrics table's separator", path, start+2)

	rows := map[string]metricRow{}
	for i := start + 2; i < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[i]), "|"); i++ {
		at := i + 1
		cells := tableCells(lines[i])
		if !assert.Len(t, cells, 4, "%s:%d: a metrics row has four cells", path, at) {
			continue
		}
		m := metricName.FindStringSubmatch(cells[0])
		if !assert.NotNil(t, m, "%s:%d: %q is not a metric name in backticks", path, at, cells[0]) {
			continue
		}
		row := metricRow{Type: cells[1], Meaning: cells[3]}
		assert.Contains(t, metricTypes, row.Type, "%s:%d: %s: type", path, at, m[1])
		if cells[2] != "—" {
			for _, l := range strings.Split(cells[2], ",") {
				l = strings.TrimSpace(l)
				assert.Regexp(t, labelName, l, "%s:%d: %s: label", path, at, m[1])
				row.Labels = append(row.Labels, l)
			}
		}
		assert.NotEmpty(t, row.Meaning, "%s:%d: %s: meaning", path, at, m[1])
		_, dup := rows[m[1]]
		assert.False(t, dup, "%s:%d: %s has two rows", path, at, m[1])
		rows[m[1]] = row
	}
	require.NotEmpty(t, rows, "%s: the metrics table is empty", path)
	return rows
}

// tableCells splits a Markdown table row into its trimmed cells; "\|" is
// a pipe inside a cell.
func tableCells(line string) []string {
	line = strings.TrimSpace(line)
	line = strings.TrimPrefix(line, "|")
	line = strings.TrimSuffix(line, "|")
	line = strings.ReplaceAll(line, `\|`, "\x00")
	cells := strings.Split(line, "|")
	for i, c := range cells {
		cells[i] = strings.TrimSpace(strings.ReplaceAll(c, "\x00", "|"))
	}
	return cells
}

func TestTableCells(t *testing.T) {
	tests := map[string]struct {
		line string
		want []string
	}{
		"plain":        {"| `a` | counter | — | x |", []string{"`a`", "counter", "—", "x"}},
		"no outer bar": {"`a` | gauge | b, c | y", []string{"`a`", "gauge", "b, c", "y"}},
		"escaped pipe": {`| a | b \| c |`, []string{"a", "b | c"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, tc.want, tableCells(tc.line))
		})
	}
}

// metricDefinition finds a metric name where the code defines one: an
// Opts literal's Name field, or prometheus.NewDesc's first argument.
var metricDefinition = regexp.MustCompile(`(?:\bName:\s*|\bNewDesc\(\s*)"(tollgate_[a-zA-Z0-9_]+)"`)

// definedMetrics returns every metric name defined in a non-test Go file
// of the repository, with the file (and line) that defines it.
func definedMetrics(t *testing.T) map[string]string {
	t.Helper()
	found := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != root && (d.Name() == ".git" || d.Name() == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		for i, line := range readLines(t, path) {
			for _, m := range metricDefinition.FindAllStringSubmatch(line, -1) {
				if _, seen := found[m[1]]; !seen {
					rel, _ := filepath.Rel(root, path)
					found[m[1]] = rel + ":" + strconv.Itoa(i+1)
				}
			}
		}
		return nil
	})
	require.NoError(t, err)
	return found
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
