// Package mcpoauth2 is the Go binding of mcp-oauth2, an OAuth 2 resource server for MCP
// gateways: it decides whether an HTTP request may reach an MCP server, from its bearer
// token and a Kong ai-mcp-oauth2-style JSON configuration.
//
// The library is found through pkg-config (package mcp_oauth2, installed by
// scripts/install-c.sh of the mcp-oauth2 repository). Objects wrap C handles: each has an
// idempotent Close and no finalizer, so Close them (or defer it).
//
// Two ways to decide a request:
//
//   - Validator.Authorize runs the whole flow: it performs the authorization-server calls
//     with an HTTPFunc you supply (NetHTTP wraps a net/http client) and waits when another
//     request is already asking about the same token (single flight).
//   - Validator.Begin and Pending are the underlying sans-I/O steps, for hosts that drive
//     their own I/O and scheduling: StateHTTP (perform the request, then Resume or Fail),
//     StateWait (wait with Ready, Wait or IsReady, then Continue).
//
// Time is the caller's: every step takes the current time.
package mcpoauth2

/*
#cgo pkg-config: mcp_oauth2
#include <stdlib.h>
#include "mcp_oauth2.h"
*/
import "C"

import (
	"fmt"
	"sync"
	"time"
	"unsafe"
)

// Result codes of the C ABI (mcp_oauth2_result), as ResultError.Code.
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
	ResultWrongState      = uint32(C.MCP_OAUTH2_RESULT_WRONG_STATE)
)

// Transport failure kinds for Pending.Fail and TransportError (mcp_oauth2_transport_error).
const (
	TransportConnect      = uint32(C.MCP_OAUTH2_TRANSPORT_ERROR_CONNECT)
	TransportTimeout      = uint32(C.MCP_OAUTH2_TRANSPORT_ERROR_TIMEOUT)
	TransportTLS          = uint32(C.MCP_OAUTH2_TRANSPORT_ERROR_TLS)
	TransportBodyTooLarge = uint32(C.MCP_OAUTH2_TRANSPORT_ERROR_BODY_TOO_LARGE)
	TransportOther        = uint32(C.MCP_OAUTH2_TRANSPORT_ERROR_OTHER)
)

// Why a host refuses a request the validator allowed, for Decision.Refuse (mcp_oauth2_refusal).
const (
	RefuseConsumerNotFound       = uint32(C.MCP_OAUTH2_REFUSAL_CONSUMER_NOT_FOUND)
	RefuseConsumerGroupsNotFound = uint32(C.MCP_OAUTH2_REFUSAL_CONSUMER_GROUPS_NOT_FOUND)
	RefuseConsumerLookupFailed   = uint32(C.MCP_OAUTH2_REFUSAL_CONSUMER_LOOKUP_FAILED)
)

// Bits of Validator.Reads: what decisions read beyond the method, path and Authorization.
const (
	ReadsBody      = uint32(C.MCP_OAUTH2_READS_BODY)
	ReadsForwarded = uint32(C.MCP_OAUTH2_READS_FORWARDED)
	ReadsOrigin    = uint32(C.MCP_OAUTH2_READS_ORIGIN)
)

// MaxResponseBody is the largest authorization-server response body the library reads
// (1 MiB); a larger one is a TransportBodyTooLarge failure.
const MaxResponseBody = 1 << 20

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

func unixMs(t time.Time) C.uint64_t {
	ms := t.UnixMilli()
	if ms < 0 {
		return 0
	}
	return C.uint64_t(ms)
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
	PeerAddr string      // optional, "" = unknown (needed with ReadsForwarded)
	Body     []byte      // optional, nil = not buffered (needed with ReadsBody)
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

// New builds a validator from a JSON configuration (the Kong ai-mcp-oauth2 config object).
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

// Begin starts deciding one request at now, without I/O: a decision, or a pending whose
// State says what the host does next. The caller owns both and Closes them.
func (v *Validator) Begin(r *Request, now time.Time) (*Decision, *Pending, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	c, a := r.toC()
	defer a.free()
	var d *C.mcp_oauth2_decision
	var p *C.mcp_oauth2_pending
	if err := check(C.mcp_oauth2_validator_begin(v.p, c, unixMs(now), &d, &p)); err != nil {
		return nil, nil, err
	}
	if d != nil {
		return &Decision{p: d}, nil, nil
	}
	return nil, &Pending{p: p}, nil
}

// AuthorizeBuiltin decides with the library's own blocking HTTP client (ureq and rustls;
// the configured timeout, ssl_verify and keepalive), blocking an OS thread in C for up to
// about twice the configured timeout. Authorize with a Go HTTP client is usually the better
// fit for a Go program.
func (v *Validator) AuthorizeBuiltin(r *Request) (*Decision, error) {
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

// TokenCacheKey is the key under which a token's answer is cached (64 hex digits, never the
// token): the CacheKey of its introspection pending, for hosts with a shared cache.
func (v *Validator) TokenCacheKey(token string) (string, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var key [64]byte
	ptr, n := bytesArg([]byte(token))
	if err := check(C.mcp_oauth2_validator_token_cache_key(v.p, ptr, n, (*C.uint8_t)(unsafe.Pointer(&key[0])))); err != nil {
		return "", err
	}
	return string(key[:]), nil
}

// Reads says which parts of a request decisions read beyond its method, path and
// Authorization headers: a bitwise OR of ReadsBody, ReadsForwarded and ReadsOrigin.
func (v *Validator) Reads() (uint32, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var reads C.uint32_t
	err := check(C.mcp_oauth2_validator_reads(v.p, &reads))
	return uint32(reads), err
}

// MaxRequestBodySize is the configured max_request_body_size in bytes (0: no limit).
func (v *Validator) MaxRequestBodySize() (uint64, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var size C.uint64_t
	err := check(C.mcp_oauth2_validator_max_request_body_size(v.p, &size))
	return uint64(size), err
}

// RemoveHeaders are the header names every allowed request removes, known up front.
func (v *Validator) RemoveHeaders() ([]string, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var n C.size_t
	if err := check(C.mcp_oauth2_validator_remove_header_count(v.p, &n)); err != nil {
		return nil, err
	}
	out := make([]string, 0, int(n))
	for i := C.size_t(0); i < n; i++ {
		var s C.mcp_oauth2_str
		if err := check(C.mcp_oauth2_validator_remove_header(v.p, i, &s)); err != nil {
			return nil, err
		}
		out = append(out, goString(s))
	}
	return out, nil
}

// ClaimHeaders are the configured claim header names, in the order of
// Decision.ClaimHeaderValue.
func (v *Validator) ClaimHeaders() ([]string, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var n C.size_t
	if err := check(C.mcp_oauth2_validator_claim_header_count(v.p, &n)); err != nil {
		return nil, err
	}
	out := make([]string, 0, int(n))
	for i := C.size_t(0); i < n; i++ {
		var s C.mcp_oauth2_str
		if err := check(C.mcp_oauth2_validator_claim_header(v.p, i, &s)); err != nil {
			return nil, err
		}
		out = append(out, goString(s))
	}
	return out, nil
}

// MetadataDocument is the Protected Resource Metadata document (JSON) this validator serves.
func (v *Validator) MetadataDocument() ([]byte, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var b C.mcp_oauth2_bytes
	err := check(C.mcp_oauth2_validator_metadata_document(v.p, &b))
	return goBytes(b), err
}

// State is what a pending waits for.
type State uint32

// The states of a Pending.
const (
	// StateHTTP: perform the request (HTTPRequest), then Resume or Fail. This request
	// leads: concurrent requests for the same token wait for it.
	StateHTTP = State(C.MCP_OAUTH2_PENDING_STATE_HTTP)
	// StateWait: another request is asking the authorization server what this one needs;
	// wait (Ready, Wait or IsReady; at most MaxWait), then Continue.
	StateWait = State(C.MCP_OAUTH2_PENDING_STATE_WAIT)
	// StateDone: resumed to a decision; only Close remains.
	StateDone = State(C.MCP_OAUTH2_PENDING_STATE_DONE)
)

func (s State) String() string {
	switch s {
	case StateHTTP:
		return "http"
	case StateWait:
		return "wait"
	case StateDone:
		return "done"
	}
	return fmt.Sprintf("State(%d)", uint32(s))
}

// HTTPRequest is the authorization-server request of a pending in StateHTTP. Headers and
// Body carry credentials and the token: never log them.
type HTTPRequest struct {
	Method  string
	URL     string
	Headers [][2]string
	Body    []byte
	Timeout time.Duration // the whole exchange; past it, fail with TransportTimeout
}

// HTTPResponse is the authorization server's answer, for Resume.
type HTTPResponse struct {
	Status  int
	Headers [][2]string // only Content-Type is read
	Body    []byte
}

// Pending is a validation waiting for an HTTP exchange (StateHTTP) or for another
// request's (StateWait). Not for concurrent use, except Ready's channel.
type Pending struct{ p *C.mcp_oauth2_pending }

// State is what the host does next.
func (p *Pending) State() (State, error) {
	var s C.mcp_oauth2_pending_state
	err := check(C.mcp_oauth2_pending_get_state(p.p, &s))
	return State(s), err
}

// Method is the HTTP method to use (StateHTTP).
func (p *Pending) Method() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_pending_method(p.p, &s))
	return goString(s), err
}

// URL is the URL to call (StateHTTP).
func (p *Pending) URL() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_pending_url(p.p, &s))
	return goString(s), err
}

// Headers are the headers to send (StateHTTP).
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

// Body is the request body (StateHTTP; it carries the token: never log it).
func (p *Pending) Body() ([]byte, error) {
	var b C.mcp_oauth2_bytes
	err := check(C.mcp_oauth2_pending_body(p.p, &b))
	return goBytes(b), err
}

// Timeout is how long the exchange may take (StateHTTP).
func (p *Pending) Timeout() (time.Duration, error) {
	var ms C.uint64_t
	err := check(C.mcp_oauth2_pending_timeout_ms(p.p, &ms))
	return time.Duration(ms) * time.Millisecond, err
}

// HTTPRequest is the whole request to perform (StateHTTP).
func (p *Pending) HTTPRequest() (*HTTPRequest, error) {
	var r HTTPRequest
	var err error
	if r.Method, err = p.Method(); err != nil {
		return nil, err
	}
	if r.URL, err = p.URL(); err != nil {
		return nil, err
	}
	if r.Headers, err = p.Headers(); err != nil {
		return nil, err
	}
	if r.Body, err = p.Body(); err != nil {
		return nil, err
	}
	if r.Timeout, err = p.Timeout(); err != nil {
		return nil, err
	}
	return &r, nil
}

// CacheKey is the key of the answer this step waits for (64 hex digits, never the token).
func (p *Pending) CacheKey() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_pending_cache_key(p.p, &s))
	return goString(s), err
}

func decisionOrNext(d *C.mcp_oauth2_decision, err error) (*Decision, error) {
	if err != nil || d == nil {
		return nil, err
	}
	return &Decision{p: d}, nil
}

// Resume continues with the response received at now. A nil decision (and nil error)
// means the pending moved to its next step: read State again.
func (p *Pending) Resume(now time.Time, resp *HTTPResponse) (*Decision, error) {
	a := newArena(headersSize(resp.Headers) + uintptr(len(resp.Body)) + 8)
	defer a.free()
	hs, n := a.headers(resp.Headers)
	bp, bn := a.bytes(resp.Body)
	var d *C.mcp_oauth2_decision
	err := check(C.mcp_oauth2_pending_resume(p.p, unixMs(now), C.uint16_t(resp.Status), hs, n, bp, bn, &d))
	return decisionOrNext(d, err)
}

// ResumeCached is Resume with a response kept from an earlier, identical call (a cache
// shared between processes, under CacheKey), first received at fetchedAt.
func (p *Pending) ResumeCached(fetchedAt, now time.Time, resp *HTTPResponse) (*Decision, error) {
	a := newArena(headersSize(resp.Headers) + uintptr(len(resp.Body)) + 8)
	defer a.free()
	hs, n := a.headers(resp.Headers)
	bp, bn := a.bytes(resp.Body)
	var d *C.mcp_oauth2_decision
	err := check(C.mcp_oauth2_pending_resume_cached(p.p, unixMs(fetchedAt), unixMs(now), C.uint16_t(resp.Status),
		hs, n, bp, bn, &d))
	return decisionOrNext(d, err)
}

// Fail continues after a failed exchange (kind: one of the Transport* constants; the
// message is for logs and must not contain credentials). The decision is a 503.
func (p *Pending) Fail(now time.Time, kind uint32, message string) (*Decision, error) {
	ptr, n := bytesArg([]byte(message))
	var d *C.mcp_oauth2_decision
	err := check(C.mcp_oauth2_pending_fail(p.p, unixMs(now), C.uint32_t(kind), ptr, n, &d))
	return decisionOrNext(d, err)
}

// IsReady reports whether the answer a waiting pending waits for is in (never blocks).
func (p *Pending) IsReady() (bool, error) {
	var ready C.bool
	err := check(C.mcp_oauth2_pending_is_ready(p.p, &ready))
	return bool(ready), err
}

// Wait blocks until the answer is in or timeout passes; true if it is in. It blocks an OS
// thread in C: in Go, prefer Ready.
func (p *Pending) Wait(timeout time.Duration) (bool, error) {
	var ready C.bool
	ms := timeout.Milliseconds()
	if ms < 0 {
		ms = 0
	}
	err := check(C.mcp_oauth2_pending_wait(p.p, C.uint64_t(ms), &ready))
	return bool(ready), err
}

// MaxWait is how long waiting makes sense; past it, Continue anyway (a 503).
func (p *Pending) MaxWait() (time.Duration, error) {
	var ms C.uint64_t
	err := check(C.mcp_oauth2_pending_max_wait_ms(p.p, &ms))
	return time.Duration(ms) * time.Millisecond, err
}

// Continue continues a waiting pending at now with the answer it waited for (a 503 if it
// is not in yet). A nil decision (and nil error) means the pending moved to another step:
// read State again.
func (p *Pending) Continue(now time.Time) (*Decision, error) {
	var d *C.mcp_oauth2_decision
	err := check(C.mcp_oauth2_pending_continue(p.p, unixMs(now), &d))
	return decisionOrNext(d, err)
}

// Close frees the pending (also after a decision). Closing a pending in StateHTTP
// abandons its validation: requests waiting for it get a 503. Idempotent.
func (p *Pending) Close() { C.mcp_oauth2_pending_free(&p.p) }

// Decision is the verdict on one request; immutable, safe for concurrent reads until Close.
type Decision struct{ p *C.mcp_oauth2_decision }

// InternalError is the 500 response for a host that could not get a decision at all.
func InternalError() (*Decision, error) {
	var d *C.mcp_oauth2_decision
	if err := check(C.mcp_oauth2_decision_internal_error(&d)); err != nil {
		return nil, err
	}
	return &Decision{p: d}, nil
}

// Close frees the decision. Idempotent.
func (d *Decision) Close() { C.mcp_oauth2_decision_free(&d.p) }

// Allowed reports whether to forward upstream.
func (d *Decision) Allowed() (bool, error) {
	var b C.bool
	err := check(C.mcp_oauth2_decision_allowed(d.p, &b))
	return bool(b), err
}

// Reason is the stable snake_case reason, for logs and metrics.
func (d *Decision) Reason() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_decision_reason(d.p, &s))
	return goString(s), err
}

// Detail is a secret-free explanation for logs (ResultAbsent when there is none).
func (d *Decision) Detail() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_decision_detail(d.p, &s))
	return goString(s), err
}

// Status is the HTTP status of a response (ResultAbsent for an allowed decision).
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

// ResponseHeaders are all response headers, in order.
func (d *Decision) ResponseHeaders() ([][2]string, error) {
	var n C.size_t
	if err := check(C.mcp_oauth2_decision_response_header_count(d.p, &n)); err != nil {
		return nil, err
	}
	out := make([][2]string, 0, int(n))
	for i := C.size_t(0); i < n; i++ {
		var name, value C.mcp_oauth2_str
		if err := check(C.mcp_oauth2_decision_response_header(d.p, i, &name, &value)); err != nil {
			return nil, err
		}
		out = append(out, [2]string{goString(name), goString(value)})
	}
	return out, nil
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

// MustRemove reports whether a client request header must not reach the upstream (one of
// RemoveHeaders after case and _/- folding: X_User_Id matches X-User-Id). Ask it for every
// request header.
func (d *Decision) MustRemove(name string) (bool, error) {
	var b C.bool
	ptr, n := bytesArg([]byte(name))
	err := check(C.mcp_oauth2_decision_must_remove(d.p, ptr, n, &b))
	return bool(b), err
}

// SetHeaders are the headers to set upstream after the removals.
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

// ClaimHeaderValue is the value of claim header i (Validator.ClaimHeaders order); ok is
// false when the token lacks the claim (then the upstream must get no such header).
func (d *Decision) ClaimHeaderValue(i int) (value string, ok bool, err error) {
	var s C.mcp_oauth2_str
	r := C.mcp_oauth2_decision_claim_header_value(d.p, C.size_t(i), &s)
	if r == C.MCP_OAUTH2_RESULT_ABSENT {
		if allowed, aerr := d.Allowed(); aerr == nil && allowed {
			return "", false, nil
		}
	}
	if err := check(r); err != nil {
		return "", false, err
	}
	return goString(s), true, nil
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

// Consumer is the value of the configured consumer_claim.
func (d *Decision) Consumer() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_decision_consumer(d.p, &s))
	return goString(s), err
}

// Credential is the value of the configured credential_claim.
func (d *Decision) Credential() (string, error) {
	var s C.mcp_oauth2_str
	err := check(C.mcp_oauth2_decision_credential(d.p, &s))
	return goString(s), err
}

// ValidUntil is the token's expiry (its exp); ResultAbsent when it has none. Long-lived
// responses (SSE streams) must end by then.
func (d *Decision) ValidUntil() (time.Time, error) {
	var t C.int64_t
	if err := check(C.mcp_oauth2_decision_valid_until(d.p, &t)); err != nil {
		return time.Time{}, err
	}
	return time.Unix(int64(t), 0), nil
}

// RecheckAt is when the validator's cached answer ages out: a host holding a stream open
// validates the token again then.
func (d *Decision) RecheckAt() (time.Time, error) {
	var ms C.uint64_t
	if err := check(C.mcp_oauth2_decision_recheck_at(d.p, &ms)); err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(int64(ms)), nil
}

// CacheTTL is how long a cache shared with other processes may keep the answer behind this
// decision (ResultAbsent: not at all).
func (d *Decision) CacheTTL() (time.Duration, error) {
	var ms C.uint64_t
	err := check(C.mcp_oauth2_decision_cache_ttl_ms(d.p, &ms))
	return time.Duration(ms) * time.Millisecond, err
}

// Refuse is the response for a host that refuses this allowed request itself (refusal:
// one of the Refuse* constants). The caller owns and Closes the new decision.
func (d *Decision) Refuse(refusal uint32) (*Decision, error) {
	var r *C.mcp_oauth2_decision
	if err := check(C.mcp_oauth2_decision_refuse(d.p, C.uint32_t(refusal), &r)); err != nil {
		return nil, err
	}
	return &Decision{p: r}, nil
}
