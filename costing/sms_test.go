package costing_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/costing"
)

// gsmTable is the GSM 03.38 default alphabet in code order, 0x00-0x7F, with
// ESC (0x1B) in its place; gsmExtension the characters of the extension
// table (each sent as ESC + code). The tests' reference segmenter uses these
// rather than the package's tables.
const (
	gsmTable = "@£$¥èéùìòÇ\nØø\rÅå" +
		"Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ" +
		" !\"#¤%&'()*+,-./" +
		"0123456789:;<=>?" +
		"¡ABCDEFGHIJKLMNO" +
		"PQRSTUVWXYZÄÖÑÜ§" +
		"¿abcdefghijklmno" +
		"pqrstuvwxyzäöñüà"
	gsmExtension = "\f^{}\\[~]|€"
)

// referenceSegments is a second, plain implementation of the segment rules.
// It returns the segments, the encoding and the total units (septets or
// UTF-16 units).
func referenceSegments(text string) (segments, units int64, encoding string) {
	var sizes []int
	gsm := true
	for _, r := range text {
		switch {
		case r == 0x1b || r == utf8.RuneError:
			gsm = false
		case strings.ContainsRune(gsmExtension, r):
			sizes = append(sizes, 2)
		case strings.ContainsRune(gsmTable, r):
			sizes = append(sizes, 1)
		default:
			gsm = false
		}
	}
	single, part := 160, 153
	encoding = costing.EncodingGSM7
	if !gsm {
		sizes = sizes[:0]
		for _, r := range text {
			sizes = append(sizes, utf8.RuneLen(r)/4+1) // 4-byte UTF-8 is astral: a surrogate pair
		}
		single, part, encoding = 70, 67, costing.EncodingUCS2
	}
	total := 0
	for _, s := range sizes {
		total += s
	}
	if total <= single {
		return 1, int64(total), encoding
	}
	segments, room := int64(1), part
	for _, s := range sizes {
		if s > room {
			segments, room = segments+1, part
		}
		room -= s
	}
	return segments, int64(total), encoding
}

func TestSMSSegments(t *testing.T) {
	a := func(n int) string { return strings.Repeat("a", n) }
	zh := func(n int) string { return strings.Repeat("ж", n) } // Cyrillic: not GSM
	emoji := func(n int) string { return strings.Repeat("😀", n) }
	tests := map[string]struct {
		text     string
		segments int64
		encoding string
	}{
		"empty is one segment":   {"", 1, costing.EncodingGSM7},
		"gsm 1":                  {"a", 1, costing.EncodingGSM7},
		"gsm 160":                {a(160), 1, costing.EncodingGSM7},
		"gsm 161 is 153+8":       {a(161), 2, costing.EncodingGSM7},
		"gsm 306":                {a(306), 2, costing.EncodingGSM7},
		"gsm 307":                {a(307), 3, costing.EncodingGSM7},
		"gsm 1600":               {a(1600), 11, costing.EncodingGSM7},
		"80 euro is 160 septets": {strings.Repeat("€", 80), 1, costing.EncodingGSM7},
		"81 euro is 162 septets": {strings.Repeat("€", 81), 2, costing.EncodingGSM7},
		"80 form feeds":          {strings.Repeat("\f", 80), 1, costing.EncodingGSM7},
		"81 form feeds":          {strings.Repeat("\f", 81), 2, costing.EncodingGSM7},
		"159 plus one extension": {a(159) + "^", 2, costing.EncodingGSM7},
		"158 plus one extension": {a(158) + "^", 1, costing.EncodingGSM7},
		"greek capitals are gsm": {strings.Repeat("Δ", 160), 1, costing.EncodingGSM7},
		"newline and cr are gsm": {"a\nb\rc", 1, costing.EncodingGSM7},
		"whole basic table":      {strings.ReplaceAll(gsmTable, "\x1b", ""), 1, costing.EncodingGSM7},
		"whole extension table":  {gsmExtension, 1, costing.EncodingGSM7},
		// 152 septets, then € needs 2 with 1 left: it opens segment 2, which
		// then holds 2+151, and the last 'a' opens segment 3. Counting
		// septets alone (306 = 2×153) would say 2.
		"escape pair not split at 153": {a(152) + "€" + a(152), 3, costing.EncodingGSM7},
		"escape pair fits exactly":     {a(151) + "€" + a(153), 2, costing.EncodingGSM7},
		"ucs2 70":                      {zh(70), 1, costing.EncodingUCS2},
		"ucs2 71 is 67+4":              {zh(71), 2, costing.EncodingUCS2},
		"ucs2 134":                     {zh(134), 2, costing.EncodingUCS2},
		"ucs2 135":                     {zh(135), 3, costing.EncodingUCS2},
		"35 emoji are 70 units":        {emoji(35), 1, costing.EncodingUCS2},
		"36 emoji are 72 units":        {emoji(36), 2, costing.EncodingUCS2},
		"69 units then emoji":          {zh(69) + "😀", 2, costing.EncodingUCS2},
		// 66 units, then a surrogate pair with 1 left: it opens segment 2
		// (2+65), and the last unit opens segment 3; 134 = 2×67 would say 2.
		"surrogate pair not split at 67": {zh(66) + "😀" + zh(66), 3, costing.EncodingUCS2},
		"surrogate pair fits exactly":    {zh(65) + "😀" + zh(67), 2, costing.EncodingUCS2},
		"1600 emoji":                     {emoji(1600), 49, costing.EncodingUCS2}, // 33 per segment
		"one non-gsm char forces ucs2":   {a(100) + "ж", 2, costing.EncodingUCS2},
		"curly apostrophe is not gsm":    {"It’s here", 1, costing.EncodingUCS2},
		"lowercase c cedilla is not gsm": {"ç", 1, costing.EncodingUCS2},
		"backtick is not gsm":            {"`", 1, costing.EncodingUCS2},
		"escape char is not gsm":         {"\x1b", 1, costing.EncodingUCS2},
		"invalid utf-8 is ucs2":          {"ab\xffcd", 1, costing.EncodingUCS2},
		"emoji alone":                    {"👍", 1, costing.EncodingUCS2},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			segments, encoding := costing.SMSSegments(tc.text)
			assert.Equal(t, tc.segments, segments)
			assert.Equal(t, tc.encoding, encoding)
			refSegments, _, refEncoding := referenceSegments(tc.text)
			assert.Equal(t, tc.segments, refSegments, "reference")
			assert.Equal(t, tc.encoding, refEncoding, "reference")
		})
	}
}

func TestSMSSegmentsEveryGSMCharacter(t *testing.T) {
	basic := strings.ReplaceAll(gsmTable, "\x1b", "")
	require.Equal(t, 127, utf8.RuneCountInString(basic))
	for _, r := range basic {
		segments, encoding := costing.SMSSegments(strings.Repeat(string(r), 160))
		assert.Equal(t, int64(1), segments, "%q", r)
		assert.Equal(t, costing.EncodingGSM7, encoding, "%q", r)
	}
	for _, r := range gsmExtension {
		segments, encoding := costing.SMSSegments(strings.Repeat(string(r), 80))
		assert.Equal(t, int64(1), segments, "%q", r)
		assert.Equal(t, costing.EncodingGSM7, encoding, "%q", r)
		segments, _ = costing.SMSSegments(strings.Repeat(string(r), 81))
		assert.Equal(t, int64(2), segments, "%q", r)
	}
	// Every other code point below U+0400 is outside GSM-7.
	for r := rune(0); r < 0x400; r++ {
		if strings.ContainsRune(basic+gsmExtension, r) {
			continue
		}
		_, encoding := costing.SMSSegments(string(r))
		assert.Equal(t, costing.EncodingUCS2, encoding, "%U", r)
	}
}

func TestParseTwilioMessageRecorded(t *testing.T) {
	recorded := bodies(t, "twilio")
	type want struct {
		to                         string
		media, segments, bodyChars int64
		encoding                   string
	}
	tests := map[string]want{
		"sms-gsm.txt":           {"+14155550100", 0, 1, 68, costing.EncodingGSM7},
		"sms-gsm-extension.txt": {"+447700900123", 0, 2, 281, costing.EncodingGSM7}, // 288 septets
		"sms-long-gsm.txt":      {"+14155550100", 0, 2, 295, costing.EncodingGSM7},
		"sms-ucs2-emoji.txt":    {"+33612345678", 0, 1, 64, costing.EncodingUCS2}, // 66 units
		"mms.txt":               {"+14155550100", 2, 1, 44, costing.EncodingGSM7},
	}
	require.Len(t, tests, len(recorded), "every recorded Twilio body needs a case")
	for file, w := range tests {
		t.Run(file, func(t *testing.T) {
			m, err := costing.ParseTwilioMessage("application/x-www-form-urlencoded", recorded[file])
			require.NoError(t, err)
			assert.Equal(t, []string{w.to}, m.To)
			assert.Equal(t, int64(1), m.Recipients)
			assert.Equal(t, w.media, m.Media)
			assert.Equal(t, w.segments, m.Segments)
			assert.Equal(t, w.encoding, m.Encoding)
			assert.Equal(t, w.bodyChars, int64(utf8.RuneCountInString(m.Body)))
		})
	}
}

func TestParseTwilioMessage(t *testing.T) {
	const form = "application/x-www-form-urlencoded"
	tests := map[string]struct {
		contentType, body string
		want              costing.TwilioMessage
	}{
		"one recipient": {
			form, "To=%2B15550100&From=%2B15550199&Body=Hello+%E2%82%AC",
			costing.TwilioMessage{To: []string{"+15550100"}, Recipients: 1, Body: "Hello €", Segments: 1, Encoding: costing.EncodingGSM7},
		},
		"repeated To": {
			form, "To=%2B1&To=%2B2&To=%2B3&Body=hi",
			costing.TwilioMessage{To: []string{"+1", "+2", "+3"}, Recipients: 3, Body: "hi", Segments: 1, Encoding: costing.EncodingGSM7},
		},
		"Body without To still sends one": {
			form, "From=%2B1&Body=hi",
			costing.TwilioMessage{Recipients: 1, Body: "hi", Segments: 1, Encoding: costing.EncodingGSM7},
		},
		"empty Body without To": {
			form, "From=%2B1&Body=",
			costing.TwilioMessage{Recipients: 1, Segments: 1, Encoding: costing.EncodingGSM7},
		},
		"media only": {
			form, "To=%2B1&MediaUrl=https%3A%2F%2Fx%2Fa.png",
			costing.TwilioMessage{To: []string{"+1"}, Recipients: 1, Media: 1, Segments: 1, Encoding: costing.EncodingGSM7},
		},
		"template without Body or To": {
			form, "ContentSid=HX123&From=%2B1",
			costing.TwilioMessage{Segments: 1, Encoding: costing.EncodingGSM7},
		},
		"charset parameter": {
			"application/x-www-form-urlencoded; charset=utf-8", "To=%2B1&Body=%F0%9F%98%80",
			costing.TwilioMessage{To: []string{"+1"}, Recipients: 1, Body: "😀", Segments: 1, Encoding: costing.EncodingUCS2},
		},
		"1600 characters": {
			form, "To=%2B1&Body=" + strings.Repeat("a", 1600),
			costing.TwilioMessage{To: []string{"+1"}, Recipients: 1, Body: strings.Repeat("a", 1600), Segments: 11, Encoding: costing.EncodingGSM7},
		},
		"1600 emoji": {
			form, "To=%2B1&Body=" + strings.Repeat("%F0%9F%98%80", 1600),
			costing.TwilioMessage{To: []string{"+1"}, Recipients: 1, Body: strings.Repeat("😀", 1600), Segments: 49, Encoding: costing.EncodingUCS2},
		},
		"empty form": {
			form, "",
			costing.TwilioMessage{Segments: 1, Encoding: costing.EncodingGSM7},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := costing.ParseTwilioMessage(tc.contentType, []byte(tc.body))
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseTwilioMessageErrors(t *testing.T) {
	const form = "application/x-www-form-urlencoded"
	tests := map[string]struct {
		contentType, body string
		want              error
	}{
		"1601 characters":  {form, "To=%2B1&Body=" + strings.Repeat("a", 1601), costing.ErrMessageTooLong},
		"1601 emoji":       {form, "To=%2B1&Body=" + strings.Repeat("%F0%9F%98%80", 1601), costing.ErrMessageTooLong},
		"json":             {"application/json", `{"To":"+1","Body":"hi"}`, costing.ErrContentType},
		"multipart":        {"multipart/form-data; boundary=x", "", costing.ErrContentType},
		"no content type":  {"", "To=%2B1&Body=hi", costing.ErrContentType},
		"bad content type": {"application/x-www-form-urlencoded; =", "To=%2B1", costing.ErrContentType},
		"bad escape":       {form, "To=%2B1&Body=%zz", costing.ErrMalformedBody},
		"semicolon":        {form, "To=%2B1;Body=hi", costing.ErrMalformedBody},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := costing.ParseTwilioMessage(tc.contentType, []byte(tc.body))
			require.ErrorIs(t, err, tc.want)
		})
	}
}
