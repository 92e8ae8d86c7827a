package pool

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// This file is poold's own reader for the plain, common form of an HTTP/1.1
// response: http.ReadResponse costs about ten allocations per response, and
// nearly every upstream sends a head this one can read with four. It accepts
// a form only where it can give exactly what http.ReadResponse gives, and
// declines everything else untouched so that net/http still handles the rare
// and tricky forms. It must never be more lenient than net/http: a form that
// one parser reads differently from the other is how smuggling starts.

// maxHeadLines bounds the header lines the fast path reads. Longer heads are
// rare enough to leave to net/http, and the bound keeps the one-pass scan
// and the map hint small.
const maxHeadLines = 100

// headProto is the only protocol version the fast path reads: HTTP/1.0 and
// others frame bodies and connections differently.
const headProto = "HTTP/1.1"

// statusPrefix is what an accepted status line starts with, up to the code.
const statusPrefix = headProto + " "

var (
	// errTrailerEOF is what net/http returns (unexported) when the
	// connection ends where a trailer or its end should be. Its message is
	// kept identical, and like net/http's it is not io.ErrUnexpectedEOF, so
	// that callers see what they saw before the fast path existed.
	errTrailerEOF = errors.New("http: unexpected EOF reading trailer")

	// errLongTrailer mirrors net/http's refusal of a trailer whose end is
	// not within the read buffer, which bounds what a server can make us
	// buffer.
	errLongTrailer = errors.New("http: suspiciously long trailer after chunked body")
)

var (
	crlf       = []byte("\r\n")
	doubleCRLF = []byte("\r\n\r\n")
)

// respFraming is how a response body is delimited on the wire.
type respFraming struct {
	length  int64 // body bytes when !chunked; 0 = no body
	chunked bool
}

// parseResponseHead parses the response head at the front of br into resp when it
// is in the plain form poold reads itself, and consumes it. ok is false, with
// nothing consumed, for any other form: the caller then uses http.ReadResponse.
// err is non-nil only for a read error before the head was complete (io.EOF
// becomes io.ErrUnexpectedEOF, as in http.ReadResponse); the caller must then
// not fall back to http.ReadResponse, since bufio has already handed the error
// over and the conn is unusable.
//
// method is the request's method ("" means GET); only "HEAD" changes the
// result. resp must be a zero http.Response; on success Status, StatusCode,
// Proto, ProtoMajor, ProtoMinor, Header, ContentLength, TransferEncoding,
// Close and Trailer are set exactly as http.ReadResponse sets them, and Body
// and Request are left to the caller. On a decline resp is left untouched.
//
// A chunked response gets a fresh TransferEncoding slice ([]string{"chunked"}),
// one allocation, so that no two responses share a slice a caller might edit.
//
// It blocks only while the buffered bytes are a valid prefix of an accepted
// head, that is only where http.ReadResponse would block too: a line it
// cannot accept is declined as soon as it is complete.
func parseResponseHead(br *bufio.Reader, method string, resp *http.Response) (f respFraming, ok bool, err error) {
	n, lines, ok, err := scanHead(br)
	if !ok || err != nil {
		return respFraming{}, false, err
	}
	buf, err := br.Peek(n)
	if err != nil {
		// scanHead saw these n bytes buffered; bufio cannot lose them.
		return respFraming{}, false, err
	}
	// One string for the whole head: Status, keys and values are slices of
	// it, which is what keeps the fast path at a handful of allocations.
	head := string(buf)
	code, status, hdrStart := statusLine(head)
	h := parseHeader(head, hdrStart, lines)
	f, cl, ok := framing(h, code, method)
	if !ok {
		return respFraming{}, false, nil
	}
	if _, err := br.Discard(n); err != nil {
		return respFraming{}, false, err
	}

	// shouldClose: for HTTP/1.1 only a "close" token closes, and net/http
	// then drops the Connection field.
	closing := httpguts.HeaderValuesContainsToken(h["Connection"], "close")
	if closing {
		delete(h, "Connection")
	}
	var te []string
	if f.chunked {
		// parseTransferEncoding deletes the field once it has read it.
		delete(h, "Transfer-Encoding")
		te = []string{"chunked"}
	}

	resp.Status = status
	resp.StatusCode = code
	resp.Proto = headProto
	resp.ProtoMajor, resp.ProtoMinor = 1, 1
	resp.Header = h
	resp.ContentLength = cl
	resp.TransferEncoding = te
	resp.Close = closing
	resp.Trailer = nil // a declared Trailer field is declined, so nothing is announced
	return f, true, nil
}

// scanHead finds the end of the response head at the front of br without
// consuming anything, checking each line as soon as it is complete so that a
// form the fast path cannot accept is declined at once instead of waiting for
// bytes that may never come (a server that ends lines with a bare LF is
// answered promptly by net/http and must be by us too). n is the head's length
// through the blank line and lines the number of header lines. ok is false
// for a decline, including a head that does not fit in br's buffer; err is a
// read error before the head was complete.
func scanHead(br *bufio.Reader) (n, lines int, ok bool, err error) {
	lineStart := 0 // offset of the line being scanned
	searched := 0  // bytes of the current line already searched for its LF
	want := br.Buffered()
	if want == 0 {
		want = 1
	}
	for {
		if _, err := br.Peek(want); err != nil {
			// want is at most one more than was buffered and at most
			// br.Size(), so an error means no new byte came.
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, 0, false, err
		}
		buf, _ := br.Peek(br.Buffered())
		for {
			line := buf[lineStart:]
			if lineStart > 0 && len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
				return 0, 0, false, nil // obs-fold, or a leading space net/http refuses
			}
			i := bytes.IndexByte(line[searched:], '\n')
			if i < 0 {
				searched = len(line)
				break
			}
			line = line[:searched+i+1]
			switch {
			case lineStart == 0:
				if !validStatusLine(line) {
					return 0, 0, false, nil
				}
			case len(line) == 2 && line[0] == '\r':
				return lineStart + 2, lines, true, nil
			default:
				lines++
				if lines > maxHeadLines || !validHeaderLine(line) {
					return 0, 0, false, nil
				}
			}
			lineStart += len(line)
			searched = 0
		}
		if len(buf) >= br.Size() {
			return 0, 0, false, nil // the head does not fit: net/http's to read
		}
		want = len(buf) + 1
	}
}

// validStatusLine reports whether line, with its line ending, is
// "HTTP/1.1 ddd" with a final status code, optionally followed by a space and
// a reason of visible ASCII, spaces and tabs, and ending in CRLF. 1xx heads
// are declined because the engine handles them in a loop with net/http
// anyway, and codes past 599 because nothing plain sends them.
func validStatusLine(line []byte) bool {
	const minLen = len(statusPrefix) + 3 + 2 // prefix, code, CRLF
	if len(line) < minLen || !bytes.HasPrefix(line, []byte(statusPrefix)) || !bytes.HasSuffix(line, crlf) {
		return false
	}
	code := line[len(statusPrefix) : len(statusPrefix)+3]
	for _, c := range code {
		if c < '0' || c > '9' {
			return false
		}
	}
	if code[0] < '2' || code[0] > '5' {
		return false
	}
	rest := line[len(statusPrefix)+3 : len(line)-2]
	if len(rest) == 0 {
		return true
	}
	if rest[0] != ' ' {
		return false
	}
	return plainText(rest)
}

// validHeaderLine reports whether line, with its line ending, is a field
// name of token characters, a colon right after it, and a value of visible
// ASCII, spaces and tabs, ending in CRLF. It is narrower than textproto on
// purpose: no space before the colon, no obs-text, no control bytes.
func validHeaderLine(line []byte) bool {
	if !bytes.HasSuffix(line, crlf) {
		return false
	}
	line = line[:len(line)-2]
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return false
	}
	for _, c := range line[:colon] {
		if !httpguts.IsTokenRune(rune(c)) {
			return false
		}
	}
	return plainText(line[colon+1:])
}

// plainText reports whether b holds only visible ASCII, spaces and tabs:
// the bytes every parser agrees on.
func plainText(b []byte) bool {
	for _, c := range b {
		if (c < 0x20 || c > 0x7e) && c != '\t' {
			return false
		}
	}
	return true
}

// statusLine reads the status line of a head scanHead accepted. hdrStart is
// the offset of the first header line (or of the blank line).
func statusLine(head string) (code int, status string, hdrStart int) {
	end := strings.IndexByte(head, '\r')
	d := head[len(statusPrefix):]
	code = int(d[0]-'0')*100 + int(d[1]-'0')*10 + int(d[2]-'0')
	// ReadResponse's Status is everything after the first space, with
	// leading spaces trimmed; a digit follows that space here.
	return code, head[len(statusPrefix):end], end + 2
}

// parseHeader builds the header of a head scanHead accepted, from its lines
// at off up to the blank line, as textproto's readMIMEHeader does: canonical
// keys, values trimmed of spaces and tabs, and one backing array for the
// values with each single value capped so that an append by the caller
// cannot overwrite its neighbour.
func parseHeader(head string, off, lines int) http.Header {
	h := make(http.Header, lines)
	vals := make([]string, lines)
	for off < len(head)-2 {
		end := off + strings.IndexByte(head[off:], '\r')
		line := head[off:end]
		off = end + 2
		colon := strings.IndexByte(line, ':')
		key := textproto.CanonicalMIMEHeaderKey(line[:colon])
		value := strings.Trim(line[colon+1:], " \t")
		if vv, dup := h[key]; dup {
			h[key] = append(vv, value)
			continue
		}
		vals[0] = value
		h[key] = vals[:1:1]
		vals = vals[1:]
	}
	return h
}

// framing decides how the body of an accepted head is delimited and what
// ContentLength net/http reports, mirroring readTransfer and fixLength for
// the forms the fast path takes. ok is false for every other form: those
// where net/http rewrites the header (Pragma, Trailer, duplicate
// Content-Length), fails, or reads the body until the conn closes.
func framing(h http.Header, code int, method string) (f respFraming, cl int64, ok bool) {
	if _, ok := h["Trailer"]; ok {
		return respFraming{}, 0, false
	}
	if _, ok := h["Pragma"]; ok {
		return respFraming{}, 0, false
	}
	cl, hasCL, ok := parseContentLength(h["Content-Length"])
	if !ok {
		return respFraming{}, 0, false
	}
	chunked, ok := chunkedEncoding(h["Transfer-Encoding"])
	if !ok || chunked && hasCL {
		return respFraming{}, 0, false
	}
	isHead := method == http.MethodHead
	noBody := code == http.StatusNoContent || code == http.StatusNotModified
	switch {
	case chunked && (isHead || noBody):
		// net/http reports TransferEncoding but reads no body: rare enough
		// not to mirror.
		return respFraming{}, 0, false
	case isHead:
		// A HEAD response reports the length a GET would have had, and
		// has no body whatever its status.
		if !hasCL {
			cl = -1
		}
		return respFraming{}, cl, true
	case noBody:
		// Content-Length is checked and kept in the header, but a 204 or
		// 304 never has a body.
		return respFraming{}, 0, true
	case chunked:
		return respFraming{chunked: true}, -1, true
	case hasCL:
		return respFraming{length: cl}, cl, true
	}
	// No length and a body: net/http reads it until the conn closes.
	return respFraming{}, 0, false
}

// parseContentLength reads the Content-Length values: none, or exactly one of 1
// to 19 ASCII digits that fits in an int64, the subset of what net/http's
// parseContentLength takes that needs no deduplication or godebug.
func parseContentLength(vv []string) (n int64, present, ok bool) {
	switch len(vv) {
	case 0:
		return 0, false, true
	case 1:
	default:
		return 0, false, false
	}
	v := vv[0]
	if len(v) == 0 || len(v) > 19 {
		return 0, false, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false, false
		}
	}
	u, err := strconv.ParseUint(v, 10, 63)
	if err != nil {
		return 0, false, false // more than 2^63-1: net/http's error to give
	}
	return int64(u), true, true
}

// chunkedEncoding reads the Transfer-Encoding values: none, or exactly one
// that is exactly "chunked". net/http also takes other cases of "chunked",
// but nothing plain sends them.
func chunkedEncoding(vv []string) (chunked, ok bool) {
	switch {
	case len(vv) == 0:
		return false, true
	case len(vv) == 1 && vv[0] == "chunked":
		return true, true
	}
	return false, false
}

// framedReader reads a response body as framed on the wire, in the same
// pieces and with the same errors as net/http's body reader, so that the
// engine can embed it in its body and read Content-Length bodies without an
// allocation. A chunked body costs one, for net/http's chunked decoder
// (through httputil), whose trailer it then reads into the response's
// Trailer. It is not safe for concurrent use; the engine's body serialises.
//
// Differences from net/http's body, all on the error path: after an error
// that ends the body (premature EOF, a bad trailer) Read keeps returning
// that error rather than io.EOF or http.ErrBodyReadAfterClose, so a truncated
// body can never later look complete; and a read error other than io.EOF
// while waiting for the trailer is returned unchanged instead of being turned
// into errTrailerEOF or errLongTrailer, so that timeouts and resets stay
// visible to errors.Is/As.
type framedReader struct {
	br     *bufio.Reader
	resp   *http.Response // receives the trailer
	remain int64          // Content-Length bytes still to read
	chunks io.Reader      // net/http's chunked decoder; nil unless chunked
	err    error          // what Read returns once the body has ended
}

// reset makes r read the body framed by f from br, merging any trailer into
// resp.Trailer. resp must not be nil when f is chunked.
func (r *framedReader) reset(br *bufio.Reader, f respFraming, resp *http.Response) {
	*r = framedReader{br: br, resp: resp, remain: f.length}
	switch {
	case f.chunked:
		r.chunks = httputil.NewChunkedReader(br)
	case f.length <= 0:
		r.err = io.EOF // http.NoBody
	}
}

// Read reads body bytes. It returns io.EOF with the last bytes, as net/http
// does, which lets the engine give the conn back without another Read.
func (r *framedReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.chunks != nil {
		return r.readChunked(p)
	}
	return r.readLength(p)
}

// readLength reads a Content-Length body: an io.LimitReader as net/http
// uses, with its premature-EOF and early-EOF rules.
func (r *framedReader) readLength(p []byte) (int, error) {
	if r.remain <= 0 {
		// Only after a read error that came with the last bytes.
		r.err = io.EOF
		return 0, io.EOF
	}
	if int64(len(p)) > r.remain {
		p = p[:r.remain]
	}
	// bufio may return bytes with an error when it reads straight into p.
	n, err := r.br.Read(p)
	r.remain -= int64(n)
	switch {
	case err == io.EOF:
		if r.remain > 0 {
			err = io.ErrUnexpectedEOF
		}
		r.err = err
		return n, err
	case err != nil:
		// Timeouts and resets pass through untouched for the engine to
		// classify; bufio has handed the error over, so a later Read
		// tries the conn again, as net/http's would.
		return n, err
	case n > 0 && r.remain == 0:
		r.err = io.EOF
		return n, io.EOF
	}
	return n, nil
}

// readChunked reads a chunked body and, at its end, the trailer.
func (r *framedReader) readChunked(p []byte) (int, error) {
	n, err := r.chunks.Read(p)
	if err != io.EOF {
		// The decoder keeps its own error, so no state is needed here.
		return n, err
	}
	if err := r.readTrailer(); err != nil {
		r.err = err
		return n, err
	}
	r.err = io.EOF
	return n, io.EOF
}

// readTrailer reads what follows the last chunk as net/http's body does:
// the empty trailer is one CRLF; anything else must end within the read
// buffer and is read as a MIME header into resp.Trailer.
func (r *framedReader) readTrailer() error {
	buf, err := r.br.Peek(2)
	if bytes.Equal(buf, crlf) {
		_, err := r.br.Discard(2)
		return err
	}
	if len(buf) < 2 {
		if err == io.EOF {
			return errTrailerEOF
		}
		return err
	}
	found, err := peekDoubleCRLF(r.br)
	if err != nil {
		return err
	}
	if !found {
		return errLongTrailer
	}
	hdr, err := textproto.NewReader(r.br).ReadMIMEHeader()
	if err != nil {
		if err == io.EOF {
			return errTrailerEOF
		}
		return err
	}
	if r.resp.Trailer == nil {
		r.resp.Trailer = http.Header(hdr)
	} else {
		maps.Copy(r.resp.Trailer, http.Header(hdr))
	}
	return nil
}

// peekDoubleCRLF reports whether "\r\n\r\n" comes up within br's buffer, as
// net/http's seeUpcomingDoubleCRLF does, but searching each byte once. It is
// false without an error when the buffer fills or the stream ends first, and
// returns any other read error, which net/http would hide.
func peekDoubleCRLF(br *bufio.Reader) (bool, error) {
	from := 0
	want := max(br.Buffered(), 1)
	for {
		if _, err := br.Peek(want); err != nil {
			if err == io.EOF {
				return false, nil
			}
			return false, err
		}
		buf, _ := br.Peek(br.Buffered())
		if bytes.Contains(buf[from:], doubleCRLF) {
			return true, nil
		}
		if len(buf) >= br.Size() {
			return false, nil
		}
		from = max(len(buf)-len(doubleCRLF)+1, 0)
		want = len(buf) + 1
	}
}
