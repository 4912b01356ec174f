// Package mcpoauth2 is a small cgo binding of the mcp-oauth2 C ABI (include/mcp_oauth2.h),
// linked against the static library. It exists to test the C ABI from Go and as a
// starting point for Go hosts; it wraps every object in a type with an idempotent Close.
package mcpoauth2

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: ${SRCDIR}/../../target/debug/libmcp_oauth2.a -lpthread -ldl -lm
#include <stdlib.h>
#include "mcp_oauth2.h"
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"
)

// Result codes of the C ABI (mcp_oauth2_result).
const (
	ResultOK              = uint32(C.MCP_OAUTH2_RESULT_OK)
	ResultNullParameter   = uint32(C.MCP_OAUTH2_RESULT_NULL_PARAMETER)
	ResultPanic           = uint32(C.MCP_OAUTH2_RESULT_PANIC)
	ResultInvalidConfig   = uint32(C.MCP_OAUTH2_RESULT_INVALID_CONFIG)
	ResultUnsupported     = uint32(C.MCP_OAUTH2_RESULT_UNSUPPORTED)
	ResultInvalidArgument = uint32(C.MCP_OAUTH2_RESULT_INVALID_ARGUMENT)
	ResultAbsent          = uint32(C.MCP_OAUTH2_RESULT_ABSENT)
	ResultOutOfRange      = uint32(C.MCP_OAUTH2_RESULT_OUT_OF_RANGE)
	ResultAlreadyResumed  = uint32(C.MCP_OAUTH2_RESULT_ALREADY_RESUMED)
)

// Transport failure kinds for Pending.Fail (mcp_oauth2_transport_error).
const (
	TransportConnect      = uint32(C.MCP_OAUTH2_TRANSPORT_ERROR_CONNECT)
	TransportTimeout      = uint32(C.MCP_OAUTH2_TRANSPORT_ERROR_TIMEOUT)
	TransportTLS          = uint32(C.MCP_OAUTH2_TRANSPORT_ERROR_TLS)
	TransportBodyTooLarge = uint32(C.MCP_OAUTH2_TRANSPORT_ERROR_BODY_TOO_LARGE)
	TransportOther        = uint32(C.MCP_OAUTH2_TRANSPORT_ERROR_OTHER)
)

// ResultError is a non-OK result of a C function.
type ResultError struct{ Code uint32 }

func (e *ResultError) Error() string {
	var name C.mcp_oauth2_str
	if C.mcp_oauth2_result_name(C.uint32_t(e.Code), &name) != C.MCP_OAUTH2_RESULT_OK {
		return fmt.Sprintf("mcp-oauth2: result %d", e.Code)
	}
	return "mcp-oauth2: " + goString(name)
}

// ConfigError is a refused configuration: the field path and the whole message.
type ConfigError struct {
	Code    uint32
	Field   string
	Message string
}

func (e *ConfigError) Error() string { return e.Message }

func check(r C.mcp_oauth2_result) error {
	if r == C.MCP_OAUTH2_RESULT_OK {
		return nil
	}
	return &ResultError{Code: uint32(r)}
}

func goString(s C.mcp_oauth2_str) string { return C.GoStringN(s.ptr, C.int(s.len)) }

func goBytes(b C.mcp_oauth2_bytes) []byte {
	return C.GoBytes(unsafe.Pointer(b.ptr), C.int(b.len))
}

// bytesArg passes Go bytes (no Go pointers inside, so cgo allows it) as (ptr, len).
func bytesArg(b []byte) (*C.uint8_t, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b))
}

// arena is one C allocation holding a C struct graph for one call: cgo forbids passing Go
// memory that contains Go pointers, and the request and header structs hold pointers.
type arena struct {
	base unsafe.Pointer
	off  uintptr
	size uintptr
}

func newArena(size uintptr) *arena {
	if size == 0 {
		size = 1
	}
	return &arena{base: C.malloc(C.size_t(size)), size: size}
}

func (a *arena) alloc(n uintptr) unsafe.Pointer {
	n = (n + 7) &^ 7
	if a.off+n > a.size {
		panic("mcpoauth2: arena overflow")
	}
	p := unsafe.Add(a.base, a.off)
	a.off += n
	return p
}

func (a *arena) bytes(b []byte) (*C.uint8_t, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	p := a.alloc(uintptr(len(b)))
	copy(unsafe.Slice((*byte)(p), len(b)), b)
	return (*C.uint8_t)(p), C.size_t(len(b))
}

func (a *arena) free() { C.free(a.base) }

func headersSize(headers [][2]string) uintptr {
	n := uintptr(len(headers)) * unsafe.Sizeof(C.mcp_oauth2_header{})
	for _, h := range headers {
		n += uintptr(len(h[0])+len(h[1])) + 16
	}
	return n
}

func (a *arena) headers(headers [][2]string) (*C.mcp_oauth2_header, C.size_t) {
	if len(headers) == 0 {
		return nil, 0
	}
	p := a.alloc(uintptr(len(headers)) * unsafe.Sizeof(C.mcp_oauth2_header{}))
	hs := unsafe.Slice((*C.mcp_oauth2_header)(p), len(headers))
	for i, h := range headers {
		hs[i].name, hs[i].name_len = a.bytes([]byte(h[0]))
		hs[i].value, hs[i].value_len = a.bytes([]byte(h[1]))
	}
	return (*C.mcp_oauth2_header)(p), C.size_t(len(headers))
}

// Request is one client request.
type Request struct {
	Method   string
	Path     string
	Headers  [][2]string // name, value; a name may repeat
	PeerAddr string      // optional, "" = unknown
	Body     []byte      // optional, nil = not buffered
}

func (r *Request) toC() (*C.mcp_oauth2_request, *arena) {
	size := unsafe.Sizeof(C.mcp_oauth2_request{}) + uintptr(len(r.Method)+len(r.Path)+len(r.PeerAddr)+len(r.Body)) + 64 +
		headersSize(r.Headers)
	a := newArena(size)
	c := (*C.mcp_oauth2_request)(a.alloc(unsafe.Sizeof(C.mcp_oauth2_request{})))
	*c = C.mcp_oauth2_request{}
	c.method, c.method_len = a.bytes([]byte(r.Method))
	c.path, c.path_len = a.bytes([]byte(r.Path))
	c.headers, c.headers_len = a.headers(r.Headers)
	if r.PeerAddr != "" {
		c.peer_addr, c.peer_addr_len = a.bytes([]byte(r.PeerAddr))
	}
	if r.Body != nil {
		c.body, c.body_len = a.bytes(r.Body)
		if c.body == nil { // an empty, present body: any non-NULL pointer with length 0
			c.body = (*C.uint8_t)(a.alloc(1))
		}
	}
	return c, a
}

// Validator validates requests for one configuration; safe for concurrent use.
type Validator struct {
	mu sync.RWMutex // Close excludes the calls in flight
	p  *C.mcp_oauth2_validator
}

// New builds a validator from a JSON configuration.
func New(config string) (*Validator, error) {
	var v *C.mcp_oauth2_validator
	var cerr *C.mcp_oauth2_error
	ptr, n := bytesArg([]byte(config))
	r := C.mcp_oauth2_validator_new(ptr, n, &v, &cerr)
	if r != C.MCP_OAUTH2_RESULT_OK {
		e := &ConfigError{Code: uint32(r)}
		if cerr != nil {
			var s C.mcp_oauth2_str
			if C.mcp_oauth2_error_message(cerr, &s) == C.MCP_OAUTH2_RESULT_OK {
				e.Message = goString(s)
			}
			if C.mcp_oauth2_error_field(cerr, &s) == C.MCP_OAUTH2_RESULT_OK {
				e.Field = goString(s)
			}
			C.mcp_oauth2_error_free(&cerr)
		}
		return nil, e
	}
	return &Validator{p: v}, nil
}

// Close frees the validator; decisions and pendings stay valid. Idempotent.
func (v *Validator) Close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	C.mcp_oauth2_validator_free(&v.p)
}

// Begin starts the sans-I/O flow: a decision, or a pending HTTP request to perform.
func (v *Validator) Begin(r *Request) (*Decision, *Pending, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	c, a := r.toC()
	defer a.free()
	var d *C.mcp_oauth2_decision
	var p *C.mcp_oauth2_pending
	if err := check(C.mcp_oauth2_validator_begin(v.p, c, &d, &p)); err != nil {
		return nil, nil, err
	}
	if d != nil {
		return &Decision{p: d}, nil, nil
	}
	return nil, &Pending{p: p}, nil
}

// Authorize decides with the built-in blocking HTTP client.
func (v *Validator) Authorize(r *Request) (*Decision, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	c, a := r.toC()
	defer a.free()
	var d *C.mcp_oauth2_decision
	if err := check(C.mcp_oauth2_validator_authorize(v.p, c, &d)); err != nil {
		return nil, err
	}
	return &Decision{p: d}, nil
}

// Evict removes a token's cached result; true if one was cached.
func (v *Validator) Evict(token string) (bool, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var evicted C.bool
	ptr, n := bytesArg([]byte(token))
	err := check(C.mcp_oauth2_validator_evict(v.p, ptr, n, &evicted))
	return bool(evicted), err
}

// Pending is a validation waiting for one HTTP exchange. Not for concurrent use.
type Pending struct{ p *C.mcp_oauth2_pending }

// Method is the HTTP method to use.
func (p *Pending) Method() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_pending_method(p.p, &s))
	return goString(s), err
}

// URL is the URL to call.
func (p *Pending) URL() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_pending_url(p.p, &s))
	return goString(s), err
}

// Headers are the headers to send.
func (p *Pending) Headers() ([][2]string, error) {
	var n C.size_t
	if err := check(C.mcp_oauth2_pending_header_count(p.p, &n)); err != nil {
		return nil, err
	}
	out := make([][2]string, 0, int(n))
	for i := C.size_t(0); i < n; i++ {
		var name, value C.mcp_oauth2_str
		if err := check(C.mcp_oauth2_pending_header(p.p, i, &name, &value)); err != nil {
			return nil, err
		}
		out = append(out, [2]string{goString(name), goString(value)})
	}
	return out, nil
}

// Body is the request body (it carries the token: never log it).
func (p *Pending) Body() ([]byte, error) {
	var b C.mcp_oauth2_bytes
	err := check(C.mcp_oauth2_pending_body(p.p, &b))
	return goBytes(b), err
}

// TimeoutMs is how long the exchange may take.
func (p *Pending) TimeoutMs() (uint64, error) {
	var ms C.uint64_t
	err := check(C.mcp_oauth2_pending_timeout_ms(p.p, &ms))
	return uint64(ms), err
}

// CacheKey is the token's cache key (a digest, never the token).
func (p *Pending) CacheKey() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_pending_cache_key(p.p, &s))
	return goString(s), err
}

// Resume continues with the response; a nil decision means: perform the next request.
func (p *Pending) Resume(status uint16, headers [][2]string, body []byte) (*Decision, error) {
	a := newArena(headersSize(headers) + uintptr(len(body)) + 8)
	defer a.free()
	hs, n := a.headers(headers)
	bp, bn := a.bytes(body)
	var d *C.mcp_oauth2_decision
	if err := check(C.mcp_oauth2_pending_resume(p.p, C.uint16_t(status), hs, n, bp, bn, &d)); err != nil {
		return nil, err
	}
	if d == nil {
		return nil, nil
	}
	return &Decision{p: d}, nil
}

// Fail continues after a failed exchange (kind: one of the Transport* constants).
func (p *Pending) Fail(kind uint32, message string) (*Decision, error) {
	ptr, n := bytesArg([]byte(message))
	var d *C.mcp_oauth2_decision
	if err := check(C.mcp_oauth2_pending_fail(p.p, C.uint32_t(kind), ptr, n, &d)); err != nil {
		return nil, err
	}
	if d == nil {
		return nil, nil
	}
	return &Decision{p: d}, nil
}

// Close frees the pending (also after Resume). Idempotent.
func (p *Pending) Close() { C.mcp_oauth2_pending_free(&p.p) }

// Decision is the verdict on one request; immutable, safe for concurrent reads until Close.
type Decision struct{ p *C.mcp_oauth2_decision }

// Close frees the decision. Idempotent.
func (d *Decision) Close() { C.mcp_oauth2_decision_free(&d.p) }

// Allowed reports whether to forward upstream.
func (d *Decision) Allowed() (bool, error) {
	var b C.bool
	err := check(C.mcp_oauth2_decision_allowed(d.p, &b))
	return bool(b), err
}

// Reason is the stable snake_case reason.
func (d *Decision) Reason() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_decision_reason(d.p, &s))
	return goString(s), err
}

// Status is the HTTP status of a denial (ResultAbsent for an allowed decision).
func (d *Decision) Status() (int, error) {
	var s C.uint16_t
	err := check(C.mcp_oauth2_decision_status(d.p, &s))
	return int(s), err
}

// ResponseHeader is the value of one response header.
func (d *Decision) ResponseHeader(name string) (string, error) {
	var s C.mcp_oauth2_str
	ptr, n := bytesArg([]byte(name))
	err := check(C.mcp_oauth2_decision_response_header_value(d.p, ptr, n, &s))
	return goString(s), err
}

// Body is the response body of a denial.
func (d *Decision) Body() ([]byte, error) {
	var b C.mcp_oauth2_bytes
	err := check(C.mcp_oauth2_decision_body(d.p, &b))
	return goBytes(b), err
}

// RemoveHeaders are the request headers to remove before forwarding.
func (d *Decision) RemoveHeaders() ([]string, error) {
	var n C.size_t
	if err := check(C.mcp_oauth2_decision_remove_header_count(d.p, &n)); err != nil {
		return nil, err
	}
	out := make([]string, 0, int(n))
	for i := C.size_t(0); i < n; i++ {
		var s C.mcp_oauth2_str
		if err := check(C.mcp_oauth2_decision_remove_header(d.p, i, &s)); err != nil {
			return nil, err
		}
		out = append(out, goString(s))
	}
	return out, nil
}

// SetHeaders are the headers to set upstream.
func (d *Decision) SetHeaders() ([][2]string, error) {
	var n C.size_t
	if err := check(C.mcp_oauth2_decision_set_header_count(d.p, &n)); err != nil {
		return nil, err
	}
	out := make([][2]string, 0, int(n))
	for i := C.size_t(0); i < n; i++ {
		var name, value C.mcp_oauth2_str
		if err := check(C.mcp_oauth2_decision_set_header(d.p, i, &name, &value)); err != nil {
			return nil, err
		}
		out = append(out, [2]string{goString(name), goString(value)})
	}
	return out, nil
}

// Subject is the token's sub claim.
func (d *Decision) Subject() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_decision_subject(d.p, &s))
	return goString(s), err
}

// ClientID is the token's client_id claim.
func (d *Decision) ClientID() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_decision_client_id(d.p, &s))
	return goString(s), err
}

// Scope is the granted scope.
func (d *Decision) Scope() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_decision_scope(d.p, &s))
	return goString(s), err
}

// ValidUntil is when the token stops being usable (Unix seconds).
func (d *Decision) ValidUntil() (int64, error) {
	var t C.int64_t
	err := check(C.mcp_oauth2_decision_valid_until(d.p, &t))
	return int64(t), err
}
