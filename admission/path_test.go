package admission_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/admission"
	"github.com/tollgate/tollgate/policy"
)

func TestCanonicalPath(t *testing.T) {
	tests := map[string]struct {
		in, want, wantErr string
	}{
		"canonical already":          {in: "/v1/chat/completions", want: "/v1/chat/completions"},
		"root":                       {in: "/", want: "/"},
		"double slash first":         {in: "//v1/chat/completions", want: "/v1/chat/completions"},
		"slashes merged":             {in: "/v1///chat//completions", want: "/v1/chat/completions"},
		"dot-dot":                    {in: "/x/../v1/chat/completions", want: "/v1/chat/completions"},
		"dot":                        {in: "/./v1/./chat/completions", want: "/v1/chat/completions"},
		"dot-dot above the root":     {in: "/../../v1/models", want: "/v1/models"},
		"escaped unreserved":         {in: "/%76%31/chat/completions", want: "/v1/chat/completions"},
		"escaped dots":               {in: "/x/%2e%2E/v1/models", want: "/v1/models"},
		"escaped tilde and dash":     {in: "/a%7Eb%2dc", want: "/a~b-c"},
		"other escapes kept, hex up": {in: "/a%c3%a9/b%20c", want: "/a%C3%A9/b%20c"},
		"trailing slash kept":        {in: "/v1/", want: "/v1/"},
		"trailing dot-dot":           {in: "/a/b/..", want: "/a/"},
		"case kept":                  {in: "/V1/Chat", want: "/V1/Chat"},
		"twilio path":                {in: "/2010-04-01/Accounts/AC123/Messages.json", want: "/2010-04-01/Accounts/AC123/Messages.json"},
		"empty":                      {in: "", wantErr: "does not start with /"},
		"relative":                   {in: "v1/models", wantErr: "does not start with /"},
		"escaped slash":              {in: "/v1%2Fchat/completions", wantErr: "escaped slash"},
		"escaped slash lower":        {in: "/v1%2fchat", wantErr: "escaped slash"},
		"escaped backslash":          {in: "/v1%5Cchat", wantErr: "escaped slash"},
		"backslash":                  {in: `/v1\chat`, wantErr: "backslash"},
		"truncated escape":           {in: "/v1%7", wantErr: "malformed percent escape at byte 3"},
		"bad hex":                    {in: "/v1%zz/x", wantErr: "malformed percent escape"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := admission.CanonicalPath(tc.in)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// FuzzCanonicalPath: CanonicalPath never panics; what it returns starts
// with "/", holds no empty, "." or ".." segment (but a final empty one, a
// trailing slash), no escaped unreserved character, and is its own
// canonical form.
func FuzzCanonicalPath(f *testing.F) {
	for _, s := range []string{"/v1/chat/completions", "//v1/chat/completions", "/x/../v1/chat/completions", "/%76%31/chat/completions",
		"/V1/chat/completions", "/a/./b/../../c/", "/%2e%2e/%2E/x", "/v1%2Fchat", "/%", "/%%30", "/a%c3%a9", "/..%2f..", "/\x00/x", "/~%7e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := admission.CanonicalPath(in)
		if err != nil {
			return
		}
		if !strings.HasPrefix(got, "/") {
			t.Fatalf("%q -> %q: no leading slash", in, got)
		}
		segs := strings.Split(got[1:], "/")
		for i, s := range segs {
			if (s == "" && i != len(segs)-1) || s == "." || s == ".." {
				t.Fatalf("%q -> %q: segment %d is %q", in, got, i, s)
			}
		}
		again, err := admission.CanonicalPath(got)
		if err != nil || again != got {
			t.Fatalf("not idempotent: %q -> %q -> %q (%v)", in, got, again, err)
		}
	})
}

func TestValidClientID(t *testing.T) {
	tests := map[string]struct {
		id, wantErr string
	}{
		"simple":          {id: "team-a"},
		"every character": {id: "AZaz09._:-/"},
		"128 bytes":       {id: strings.Repeat("x", 128)},
		"129 bytes":       {id: strings.Repeat("x", 129), wantErr: "129 bytes long, over the 128 allowed"},
		"empty":           {id: "", wantErr: "empty"},
		"space":           {id: "a b", wantErr: `holds " " at byte 1`},
		"newline":         {id: "a\nb", wantErr: `holds "\n"`},
		"non-ASCII":       {id: "café", wantErr: "only A-Z a-z 0-9"},
		"at sign":         {id: "a@b", wantErr: "only A-Z"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := policy.ValidClientID(tc.id)
			if tc.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}
