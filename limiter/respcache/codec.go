package respcache

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/tollgate/tollgate/policy"
)

// An entry in Redis is one string:
//
//	[0]     version (1)
//	[1:9]   expiry, Unix milliseconds, int64 big-endian (begin.lua reads it)
//	[9]     flags: bit 0, the body is raw DEFLATE
//	varint  status, cost (nano-dollars), stored (Unix microseconds)
//	uvarint header count, then each name and value as uvarint length + bytes
//	uvarint body length (inflated)
//	rest    the body, raw or deflated
//
// Bodies of compressMin bytes or more are deflated (compress/flate at
// BestSpeed) when that makes them smaller: raw DEFLATE rather than gzip,
// whose header and CRC-32 add 18 bytes and a checksum pass to every entry
// for nothing Redis needs (the decoder checks the inflated length).
const (
	codecVersion = 1
	flagDeflate  = 1 << 0
	headerLen    = 10 // version, expiry, flags
	compressMin  = 512
)

var (
	writers = sync.Pool{New: func() any {
		w, _ := flate.NewWriter(nil, flate.BestSpeed) // a valid level: never fails
		return w
	}}
	readers = sync.Pool{New: func() any { return flate.NewReader(bytes.NewReader(nil)) }}
)

// encodeEntry appends e, to expire at expires, to dst.
func encodeEntry(dst []byte, e Entry, expires time.Time) []byte {
	dst = append(dst, codecVersion)
	dst = binary.BigEndian.AppendUint64(dst, uint64(expires.UnixMilli()))
	flagAt := len(dst)
	dst = append(dst, 0)
	dst = binary.AppendVarint(dst, int64(e.Status))
	dst = binary.AppendVarint(dst, int64(e.Cost))
	dst = binary.AppendVarint(dst, e.Stored.UnixMicro())
	dst = binary.AppendUvarint(dst, uint64(len(e.Headers)))
	for name, v := range e.Headers {
		dst = appendString(dst, name)
		dst = appendString(dst, v)
	}
	dst = binary.AppendUvarint(dst, uint64(len(e.Body)))
	if len(e.Body) >= compressMin {
		start := len(dst)
		buf := bytes.NewBuffer(dst)
		w := writers.Get().(*flate.Writer)
		w.Reset(buf)
		_, werr := w.Write(e.Body)
		cerr := w.Close()
		writers.Put(w)
		dst = buf.Bytes()
		if werr == nil && cerr == nil && len(dst)-start < len(e.Body) {
			dst[flagAt] |= flagDeflate
			return dst
		}
		dst = dst[:start]
	}
	return append(dst, e.Body...)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// errCorrupt is wrapped by every decoding error.
var errCorrupt = errors.New("respcache: corrupt entry")

// decodeEntry reads an entry encodeEntry wrote, refusing anything else (a
// value not written by this package, a truncated or altered one) with an
// error, and any body longer than maxBody.
func decodeEntry(b []byte, maxBody int64) (Entry, time.Time, error) {
	bad := func(what string, args ...any) (Entry, time.Time, error) {
		return Entry{}, time.Time{}, fmt.Errorf("%w: %s", errCorrupt, fmt.Sprintf(what, args...))
	}
	if len(b) < headerLen {
		return bad("%d bytes, shorter than its header", len(b))
	}
	if b[0] != codecVersion {
		return bad("version %d, want %d", b[0], codecVersion)
	}
	expMs := int64(binary.BigEndian.Uint64(b[1:9]))
	flags := b[9]
	if flags&^flagDeflate != 0 {
		return bad("unknown flags %#x", flags)
	}
	d := decoder{b: b[headerLen:]}
	status := d.varint()
	cost := d.varint()
	stored := d.varint()
	nh := d.uvarint()
	if d.err != nil {
		return bad("%v", d.err)
	}
	if status < 0 || status > 999 {
		return bad("status %d", status)
	}
	if nh > uint64(len(d.b))/2 { // each header takes two bytes at least
		return bad("%d headers in %d bytes", nh, len(d.b))
	}
	e := Entry{Status: int(status), Cost: policy.Money(cost), Stored: time.UnixMicro(stored)}
	if nh > 0 {
		e.Headers = make(map[string]string, nh)
		for range nh {
			name, v := d.string(), d.string()
			if d.err != nil {
				return bad("header: %v", d.err)
			}
			if _, dup := e.Headers[name]; dup {
				return bad("header %q twice", name)
			}
			e.Headers[name] = v
		}
	}
	n := d.uvarint()
	if d.err != nil {
		return bad("body length: %v", d.err)
	}
	if n > uint64(maxBody) {
		return bad("body of %d bytes, over %d", n, maxBody)
	}
	if flags&flagDeflate == 0 {
		if uint64(len(d.b)) != n {
			return bad("body of %d bytes, %d given", n, len(d.b))
		}
		if n > 0 {
			e.Body = d.b
		}
		return e, time.UnixMilli(expMs), nil
	}
	body, err := inflate(d.b, int(n))
	if err != nil {
		return bad("body: %v", err)
	}
	e.Body = body
	return e, time.UnixMilli(expMs), nil
}

// inflate returns exactly n bytes deflated in z.
func inflate(z []byte, n int) ([]byte, error) {
	r := readers.Get().(io.ReadCloser)
	defer readers.Put(r)
	if err := r.(flate.Resetter).Reset(bytes.NewReader(z), nil); err != nil {
		return nil, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("shorter than %d bytes: %w", n, err)
	}
	var one [1]byte
	if k, err := r.Read(one[:]); k > 0 || (err != nil && err != io.EOF) {
		if err == nil {
			return nil, fmt.Errorf("longer than %d bytes", n)
		}
		return nil, err
	}
	return body, nil
}

// decoder reads varints and strings, keeping the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errors.New("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errors.New("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.err = fmt.Errorf("string of %d bytes, %d left", n, len(d.b))
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
