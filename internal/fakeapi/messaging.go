package fakeapi

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"
)

// SegmentPrice is what the fake Twilio charges per SMS segment, in dollars.
const SegmentPrice = 0.0079

// Segments is the fake's count of SMS segments: 160 characters in one
// segment, 153 per segment when split (GSM-7 sizes, whatever the text).
func Segments(body string) int {
	n := utf8.RuneCountInString(body)
	if n <= 160 {
		return 1
	}
	return (n + 152) / 153
}

func itoa(n int) string { return strconv.Itoa(n) }

// twilioMessage answers POST /2010-04-01/Accounts/{sid}/Messages.json.
func (s *Server) twilioMessage(w http.ResponseWriter, r *http.Request) {
	sc := s.scenario(r)
	sid := r.PathValue("sid")
	if sc[Scenario429] {
		w.Header().Set("retry-after", s.retryAfter())
		writeJSON(w, http.StatusTooManyRequests, map[string]any{"code": 20429, "message": "Too Many Requests",
			"more_info": "https://www.twilio.com/docs/errors/20429", "status": 429})
		return
	}
	if err := r.ParseForm(); err != nil || r.PostForm.Get("To") == "" || r.PostForm.Get("Body") == "" {
		writeJSON(w, http.StatusBadRequest, map[string]any{"code": 21602, "message": "Message body and To are required", "status": 400})
		return
	}
	segs := Segments(r.PostForm.Get("Body"))
	now := time.Now().UTC().Format(time.RFC1123Z)
	writeJSON(w, http.StatusCreated, map[string]any{
		"sid": "SMfake", "account_sid": sid, "to": r.PostForm.Get("To"), "from": r.PostForm.Get("From"),
		"body": r.PostForm.Get("Body"), "status": "queued", "num_segments": itoa(segs), "num_media": "0",
		"price": fmt.Sprintf("-%.5f", SegmentPrice*float64(segs)), "price_unit": "USD", "direction": "outbound-api",
		"date_created": now, "date_updated": now, "date_sent": nil, "error_code": nil, "error_message": nil,
		"api_version": "2010-04-01", "uri": "/2010-04-01/Accounts/" + sid + "/Messages/SMfake.json",
	})
}

// sendgridMail answers POST /v3/mail/send with 202 and no body.
func (s *Server) sendgridMail(w http.ResponseWriter, r *http.Request) {
	sc := s.scenario(r)
	h := w.Header()
	h.Set("x-ratelimit-limit", "600")
	h.Set("x-ratelimit-remaining", "599")
	h.Set("x-ratelimit-reset", strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10))
	if sc[Scenario429] {
		h.Set("x-ratelimit-remaining", "0")
		h.Set("retry-after", s.retryAfter())
		writeJSON(w, http.StatusTooManyRequests, map[string]any{"errors": []any{map[string]any{"field": nil, "message": "too many requests"}}})
		return
	}
	h.Set("x-message-id", "fake-message-id")
	w.WriteHeader(http.StatusAccepted)
}
