package costing

import (
	"fmt"
	"mime"
	"net/url"
	"unicode/utf8"
)

// SMS encodings, as SMSSegments names them.
const (
	EncodingGSM7 = "GSM-7"
	EncodingUCS2 = "UCS-2"
)

// Segment sizes: a single message carries 160 septets or 70 UTF-16 units; a
// concatenated one loses room to its header (UDH) and carries 153 or 67 per
// segment.
const (
	gsmSingle  = 160
	gsmSegment = 153
	ucsSingle  = 70
	ucsSegment = 67
)

// MaxSMSChars is Twilio's limit on a message body, in characters; Twilio
// rejects longer bodies (error 21617).
const MaxSMSChars = 1600

// gsmLatin1 gives, for each code point below U+0100, its size in GSM 03.38
// septets: 1 for the basic set, 2 for the extension table (ESC + code), 0
// when GSM-7 cannot encode it.
var gsmLatin1 = func() (t [256]uint8) {
	const basic = "@£$¥èéùìòÇ\nØø\rÅå_ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?" +
		"¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
	for _, r := range basic {
		t[r] = 1
	}
	for _, r := range "\f^{}\\[~]|" {
		t[r] = 2
	}
	return t
}()

// gsmSeptets returns how many septets r takes in GSM-7: 1, 2 (the extension
// table: form feed, ^ { } \ [ ~ ] | and €), or 0 when GSM-7 cannot encode it.
func gsmSeptets(r rune) int {
	if r < 0x100 {
		return int(gsmLatin1[r])
	}
	switch r {
	case 'Δ', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ':
		return 1
	case '€':
		return 2
	}
	return 0
}

// SMSSegments returns how many segments Twilio bills for an SMS body and
// the encoding it goes out in.
//
// A body made only of GSM 03.38 characters is sent in GSM-7: 160 septets fit
// in one segment, else 153 per segment; an extension character takes two
// septets, and the pair is never split, so it moves whole to the next
// segment when one septet is left. Any other character sends the whole body
// in UCS-2 (UTF-16 in practice): 70 units fit in one segment, else 67 per
// segment; a character outside the BMP (most emoji) takes two units, and its
// surrogate pair is never split either. An empty body is one segment, as
// Twilio bills it. Twilio's optional Smart Encoding (replacing look-alikes
// such as curly quotes with GSM characters) is not applied: with it on,
// this can overcount.
func SMSSegments(text string) (segments int64, encoding string) {
	septets, gsm := 0, true
	for _, r := range text {
		s := gsmSeptets(r)
		if s == 0 {
			gsm = false
			break
		}
		septets += s
	}
	if gsm {
		if septets <= gsmSingle {
			return 1, EncodingGSM7
		}
		return pack(text, gsmSegment, gsmSeptets), EncodingGSM7
	}
	units := 0
	for _, r := range text {
		units += utf16Units(r)
	}
	if units <= ucsSingle {
		return 1, EncodingUCS2
	}
	return pack(text, ucsSegment, utf16Units), EncodingUCS2
}

// utf16Units returns how many UTF-16 code units r takes. Invalid UTF-8 reads
// as U+FFFD, one unit.
func utf16Units(r rune) int {
	if r > 0xFFFF {
		return 2
	}
	return 1
}

// pack fills segments of the given size in order, moving a character whose
// units do not fit in what is left of a segment whole to the next one.
func pack(text string, size int, units func(rune) int) int64 {
	segments, used := int64(1), 0
	for _, r := range text {
		u := units(r)
		if used+u > size {
			segments++
			used = 0
		}
		used += u
	}
	return segments
}

// TwilioMessage is what a Twilio Messages API request (POST
// /2010-04-01/Accounts/{sid}/Messages.json) commits the caller to.
type TwilioMessage struct {
	To []string
	// Recipients is the number of To values, and at least 1 when the
	// request has a Body or media, as Twilio bills each message sent.
	Recipients int64
	Body       string
	Media      int64 // MediaUrl values: with any, the message goes as MMS
	// Segments and Encoding come from SMSSegments(Body), per recipient. An
	// MMS is billed per message in most countries; the policy decides.
	Segments int64
	Encoding string
}

// ParseTwilioMessage reads a form-encoded Twilio Messages API body (To,
// From or MessagingServiceSid, Body, MediaUrl repeated). A content type
// other than application/x-www-form-urlencoded gives ErrContentType, a body
// that does not decode ErrMalformedBody, and a Body over MaxSMSChars
// characters (code points) ErrMessageTooLong. A request with neither Body
// nor media (a ContentSid template) is sized as an empty body.
func ParseTwilioMessage(contentType string, body []byte) (TwilioMessage, error) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return TwilioMessage{}, fmt.Errorf("twilio: %w: %.100q", ErrContentType, contentType)
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return TwilioMessage{}, fmt.Errorf("twilio: %w", malformed("%v", err))
	}
	m := TwilioMessage{
		To:    form["To"],
		Body:  form.Get("Body"),
		Media: int64(len(form["MediaUrl"])),
	}
	if n := utf8.RuneCountInString(m.Body); n > MaxSMSChars {
		return TwilioMessage{}, fmt.Errorf("twilio: %w: %d characters", ErrMessageTooLong, n)
	}
	m.Recipients = int64(len(m.To))
	if m.Recipients == 0 && (len(form["Body"]) > 0 || m.Media > 0) {
		m.Recipients = 1
	}
	m.Segments, m.Encoding = SMSSegments(m.Body)
	return m, nil
}
