package costing

import (
	"encoding/json"
	"fmt"
)

// SendGridMail is what a SendGrid v3 Mail Send body (POST /v3/mail/send)
// commits the caller to: one e-mail per recipient.
type SendGridMail struct {
	// Recipients is the sum over personalizations of their to, cc and bcc
	// addresses.
	Recipients       int64
	Personalizations int64
}

// ParseSendGrid reads a SendGrid v3 Mail Send body. A body that is not a
// JSON object or has fields of the wrong type gives ErrMalformedBody; one
// with no personalizations, or none with an address, gives ErrNoRecipients
// (SendGrid rejects both).
func ParseSendGrid(body []byte) (SendGridMail, error) {
	if !isObject(body) {
		return SendGridMail{}, fmt.Errorf("sendgrid: %w", malformed("not a JSON object"))
	}
	type address struct{} // the address itself is not needed
	var b struct {
		Personalizations []struct {
			To  []address `json:"to"`
			Cc  []address `json:"cc"`
			Bcc []address `json:"bcc"`
		} `json:"personalizations"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return SendGridMail{}, fmt.Errorf("sendgrid: %w", malformed("%v", err))
	}
	m := SendGridMail{Personalizations: int64(len(b.Personalizations))}
	if m.Personalizations == 0 {
		return SendGridMail{}, fmt.Errorf("sendgrid: %w: no personalizations", ErrNoRecipients)
	}
	for _, p := range b.Personalizations {
		m.Recipients += int64(len(p.To) + len(p.Cc) + len(p.Bcc))
	}
	if m.Recipients == 0 {
		return SendGridMail{}, fmt.Errorf("sendgrid: %w: no addresses", ErrNoRecipients)
	}
	return m, nil
}
