package costing_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
)

func TestParseSendGridRecorded(t *testing.T) {
	recorded := bodies(t, "sendgrid")
	tests := map[string]costing.SendGridMail{
		"mail-simple.json":   {Recipients: 1, Personalizations: 1},
		"mail-multi.json":    {Recipients: 6, Personalizations: 2},
		"mail-template.json": {Recipients: 3, Personalizations: 3},
	}
	require.Len(t, tests, len(recorded), "every recorded SendGrid body needs a case")
	for file, want := range tests {
		t.Run(file, func(t *testing.T) {
			got, err := costing.ParseSendGrid(recorded[file])
			require.NoError(t, err)
			assert.Equal(t, want, got)
		})
	}
}

func TestParseSendGrid(t *testing.T) {
	tests := map[string]struct {
		body string
		want costing.SendGridMail
		err  error
	}{
		"to cc bcc summed": {
			body: `{"personalizations":[{"to":[{"email":"a@x"},{"email":"b@x"}],"cc":[{"email":"c@x"}],"bcc":[{"email":"d@x"},{"email":"e@x"}]}]}`,
			want: costing.SendGridMail{Recipients: 5, Personalizations: 1},
		},
		"across personalizations": {
			body: `{"personalizations":[{"to":[{"email":"a@x"}]},{"to":[{"email":"b@x"}],"cc":null}]}`,
			want: costing.SendGridMail{Recipients: 2, Personalizations: 2},
		},
		"one empty personalization among others": {
			body: `{"personalizations":[{"to":[{"email":"a@x"}]},{}]}`,
			want: costing.SendGridMail{Recipients: 1, Personalizations: 2},
		},
		"no personalizations":     {body: `{"personalizations":[]}`, err: costing.ErrNoRecipients},
		"personalizations absent": {body: `{"from":{"email":"a@x"}}`, err: costing.ErrNoRecipients},
		"no addresses":            {body: `{"personalizations":[{"to":[]},{}]}`, err: costing.ErrNoRecipients},
		"empty":                   {body: ``, err: costing.ErrMalformedBody},
		"null":                    {body: `null`, err: costing.ErrMalformedBody},
		"truncated":               {body: `{"personalizations":[{"to":[`, err: costing.ErrMalformedBody},
		"personalizations object": {body: `{"personalizations":{}}`, err: costing.ErrMalformedBody},
		"address as string":       {body: `{"personalizations":[{"to":["a@x"]}]}`, err: costing.ErrMalformedBody},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := costing.ParseSendGrid([]byte(tc.body))
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}
