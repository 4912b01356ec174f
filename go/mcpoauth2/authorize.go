package mcpoauth2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// HTTPFunc performs one authorization-server request for Authorize. The context carries
// the request's timeout. Return a *TransportError to say how it failed; other errors are
// classified (timeouts, refused connections) or reported as TransportOther.
type HTTPFunc func(ctx context.Context, req *HTTPRequest) (*HTTPResponse, error)

// TransportError is a failed exchange of a known kind (one of the Transport* constants).
type TransportError struct {
	Kind uint32
	Err  error
}

func (e *TransportError) Error() string { return e.Err.Error() }
func (e *TransportError) Unwrap() error { return e.Err }

// Authorize decides one request: it performs the authorization-server calls this request
// leads with do, and waits (bounded by MaxWait and ctx) when another request already asks
// about the same token, so concurrent requests for one new token make one call. The clock
// is time.Now. A failing or slow authorization server, or a cancelled ctx, gives a 503
// decision, not an error; errors are misuse (a closed validator, an invalid request).
func (v *Validator) Authorize(ctx context.Context, r *Request, do HTTPFunc) (*Decision, error) {
	d, p, err := v.Begin(r, time.Now())
	if err != nil || d != nil {
		return d, err
	}
	defer p.Close()
	for {
		state, err := p.State()
		if err != nil {
			return nil, err
		}
		switch state {
		case StateHTTP:
			d, err = perform(ctx, p, do)
		case StateWait:
			d, err = await(ctx, p)
		default:
			return nil, &ResultError{Code: ResultAlreadyResumed}
		}
		if err != nil || d != nil {
			return d, err
		}
	}
}

func perform(ctx context.Context, p *Pending, do HTTPFunc) (*Decision, error) {
	req, err := p.HTTPRequest()
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, req.Timeout)
	resp, err := do(cctx, req)
	cancel()
	if err != nil {
		return p.Fail(time.Now(), transportKind(err), err.Error())
	}
	return p.Resume(time.Now(), resp)
}

func await(ctx context.Context, p *Pending) (*Decision, error) {
	ready, err := p.Ready()
	if err != nil {
		return nil, err
	}
	maxWait, err := p.MaxWait()
	if err != nil {
		return nil, err
	}
	timer := time.NewTimer(maxWait)
	select {
	case <-ready:
	case <-timer.C:
	case <-ctx.Done():
	}
	timer.Stop()
	return p.Continue(time.Now())
}

func transportKind(err error) uint32 {
	var te *TransportError
	if errors.As(err, &te) {
		return te.Kind
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return TransportTimeout
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return TransportConnect
	}
	return TransportOther
}

// NetHTTP is an HTTPFunc performing requests with client (http.DefaultClient when nil).
// Bodies over MaxResponseBody are a TransportBodyTooLarge failure.
func NetHTTP(client *http.Client) HTTPFunc {
	if client == nil {
		client = http.DefaultClient
	}
	return func(ctx context.Context, req *HTTPRequest) (*HTTPResponse, error) {
		var body io.Reader = http.NoBody
		if len(req.Body) > 0 {
			body = bytes.NewReader(req.Body)
		}
		hr, err := http.NewRequestWithContext(ctx, req.Method, req.URL, body)
		if err != nil {
			return nil, err
		}
		for _, h := range req.Headers {
			hr.Header.Add(h[0], h[1])
		}
		resp, err := client.Do(hr)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBody+1))
		if err != nil {
			return nil, err
		}
		if len(b) > MaxResponseBody {
			return nil, &TransportError{Kind: TransportBodyTooLarge, Err: errors.New("response body over 1 MiB")}
		}
		out := &HTTPResponse{Status: resp.StatusCode, Body: b}
		for name, values := range resp.Header {
			for _, value := range values {
				out.Headers = append(out.Headers, [2]string{name, value})
			}
		}
		return out, nil
	}
}
