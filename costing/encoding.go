package costing

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"strings"
)

// Limits of a compressed response: what ResponseReader keeps of its bytes
// and what it inflates them to, never more (a small body can inflate to
// gigabytes).
const (
	MaxEncodedResponse = 1 << 20
	MaxDecodedResponse = 8 << 20
)

// Encoding is a response's Content-Encoding as ResponseReader reads it.
type Encoding uint8

// Encodings: identity is read as it streams; gzip and deflate are kept
// (compressed, up to MaxEncodedResponse) and inflated at the end; any
// other (br, zstd, stacked codings) is passed through unread, and the call
// is settled at its estimate.
const (
	EncodingIdentity Encoding = iota
	EncodingGzip
	EncodingDeflate
	EncodingOther
)

// ParseEncoding reads a Content-Encoding header value.
func ParseEncoding(v string) Encoding {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "identity":
		return EncodingIdentity
	case "gzip", "x-gzip":
		return EncodingGzip
	case "deflate":
		return EncodingDeflate
	}
	return EncodingOther
}

// inflate decodes body, at most MaxDecodedResponse bytes of it. complete
// is false when the body was cut short, unreadable or too large: what was
// decoded is returned all the same.
func inflate(enc Encoding, body []byte) (out []byte, complete bool) {
	var r io.Reader
	switch enc {
	case EncodingGzip:
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil, false
		}
		r = zr
	case EncodingDeflate:
		// HTTP's deflate is zlib-wrapped (RFC 9110 8.4.1.2), but servers
		// long sent raw deflate: try the one, then the other.
		if zr, err := zlib.NewReader(bytes.NewReader(body)); err == nil {
			r = zr
		} else {
			r = flate.NewReader(bytes.NewReader(body))
		}
	default:
		return nil, false
	}
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, MaxDecodedResponse+1))
	if n > MaxDecodedResponse {
		return buf.Bytes()[:MaxDecodedResponse], false
	}
	return buf.Bytes(), err == nil || errors.Is(err, io.EOF)
}
