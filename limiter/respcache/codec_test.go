package respcache

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var codecEntries = map[string]Entry{
	"empty":    {},
	"small":    {Status: 200, Headers: map[string]string{"content-type": "application/json"}, Body: []byte(`{"ok":true}`), Cost: 42, Stored: time.UnixMicro(1767225600123456)},
	"large":    {Status: 200, Body: []byte(strings.Repeat(`{"choices":[{"delta":{"content":"lorem ipsum"}}]}`+"\n", 200)), Cost: 1 << 40, Stored: time.UnixMicro(1)},
	"random":   {Status: 502, Body: bytes.Repeat([]byte{0x9e, 0x37, 0x79, 0xb9, 0x7f, 0x4a, 0x7c, 0x15}, 100)},
	"negative": {Status: 0, Cost: -5, Stored: time.UnixMicro(-1)},
	"headers":  {Status: 204, Headers: map[string]string{"": "", "a": "", "x-y": "a:b\r\n\x00"}},
}

func TestCodecRoundTrip(t *testing.T) {
	exp := time.UnixMilli(1767225660000)
	for name, e := range codecEntries {
		t.Run(name, func(t *testing.T) {
			b := encodeEntry(nil, e, exp)
			got, gotExp, err := decodeEntry(b, 1<<20)
			require.NoError(t, err)
			assert.True(t, exp.Equal(gotExp))
			assert.Equal(t, e.Status, got.Status)
			assert.Equal(t, e.Cost, got.Cost)
			assert.Equal(t, e.Stored.UnixMicro(), got.Stored.UnixMicro())
			assert.Equal(t, len(e.Headers), len(got.Headers))
			for k, v := range e.Headers {
				assert.Equal(t, v, got.Headers[k])
			}
			assert.Equal(t, len(e.Body), len(got.Body))
			assert.True(t, bytes.Equal(e.Body, got.Body))
		})
	}
	t.Run("compressible bodies are deflated", func(t *testing.T) {
		e := codecEntries["large"]
		b := encodeEntry(nil, e, exp)
		assert.Equal(t, byte(flagDeflate), b[9])
		assert.Less(t, len(b), len(e.Body)/4, "repetitive JSON shrinks")
	})
	t.Run("incompressible bodies are kept raw", func(t *testing.T) {
		b := encodeEntry(nil, codecEntries["random"], exp)
		if b[9] == 0 {
			assert.Less(t, len(b), len(codecEntries["random"].Body)+40)
		} else {
			assert.Less(t, len(b), len(codecEntries["random"].Body))
		}
	})
}

func TestDecodeRefuses(t *testing.T) {
	exp := time.UnixMilli(1767225660000)
	good := encodeEntry(nil, codecEntries["small"], exp)
	large := encodeEntry(nil, codecEntries["large"], exp)
	for name, tc := range map[string]struct {
		b       []byte
		max     int64
		wantErr string
	}{
		"nil":               {b: nil, wantErr: "shorter than its header"},
		"short":             {b: good[:5], wantErr: "shorter than its header"},
		"version":           {b: append([]byte{2}, good[1:]...), wantErr: "version 2"},
		"flags":             {b: append(append(append([]byte{}, good[:9]...), 0x80), good[10:]...), wantErr: "unknown flags"},
		"truncated":         {b: good[:len(good)-3], wantErr: "body of"},
		"trailing":          {b: append(append([]byte{}, good...), 'x'), wantErr: "body of"},
		"over the cap":      {b: large, max: 100, wantErr: "over 100"},
		"deflate cut":       {b: large[:len(large)-10], wantErr: "body"},
		"not redis's":       {b: []byte("OK this is some other value"), wantErr: "version"},
		"huge header count": {b: []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0}, wantErr: "headers in"},
	} {
		t.Run(name, func(t *testing.T) {
			max := tc.max
			if max == 0 {
				max = 1 << 20
			}
			_, _, err := decodeEntry(tc.b, max)
			require.ErrorIs(t, err, errCorrupt)
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}

// FuzzDecodeEntry: whatever bytes Redis hands back, decoding never panics
// and either refuses them with errCorrupt or gives an entry that encodes
// back to one decoding the same.
func FuzzDecodeEntry(f *testing.F) {
	exp := time.UnixMilli(1767225660000)
	for _, e := range codecEntries {
		b := encodeEntry(nil, e, exp)
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, gotExp, err := decodeEntry(b, 1<<16)
		if err != nil {
			require.ErrorIs(t, err, errCorrupt)
			return
		}
		again, exp2, err := decodeEntry(encodeEntry(nil, e, gotExp), 1<<16)
		require.NoError(t, err)
		assert.True(t, gotExp.Equal(exp2))
		assert.Equal(t, e.Status, again.Status)
		assert.Equal(t, e.Cost, again.Cost)
		assert.Equal(t, e.Stored.UnixMicro(), again.Stored.UnixMicro())
		assert.Equal(t, len(e.Headers), len(again.Headers))
		assert.True(t, bytes.Equal(e.Body, again.Body))
	})
}
