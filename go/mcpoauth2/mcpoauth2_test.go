package mcpoauth2

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const config = `{"resource": "https://mcp.example.com/mcp",
 "authorization_servers": ["https://as.example.com"],
 "introspection_endpoint": "https://as.example.com/introspect",
 "client_id": "gateway", "client_secret": "gateway-secret",
 "scopes_required": ["mcp:read"],
 "claim_to_header": [{"claim": "sub", "header": "X-User-Id"}, {"claim": "email", "header": "X-Email"}]}`

const metadataURL = "https://mcp.example.com/mcp/.well-known/oauth-protected-resource"

func mustNew(t testing.TB, cfg string) *Validator {
	t.Helper()
	v, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return v
}

func code(err error) uint32 {
	var re *ResultError
	if errors.As(err, &re) {
		return re.Code
	}
	if err == nil {
		return ResultOK
	}
	return 999
}

func bearer(token string) *Request {
	return &Request{Method: "POST", Path: "/mcp", Headers: [][2]string{{"Authorization", "Bearer " + token}}}
}

func jsonAnswer(body string) *HTTPResponse {
	return &HTTPResponse{Status: 200, Headers: [][2]string{{"Content-Type", "application/json"}}, Body: []byte(body)}
}

func activeAnswer(sub string) *HTTPResponse {
	return jsonAnswer(fmt.Sprintf(`{"active": true, "sub": %q, "client_id": "app", "scope": "mcp:read",
	 "aud": "https://mcp.example.com/mcp", "exp": %d}`, sub, time.Now().Unix()+600))
}

// beginPending begins a request that must need the authorization server.
func beginPending(t testing.TB, v *Validator, token string) *Pending {
	t.Helper()
	d, p, err := v.Begin(bearer(token), time.Now())
	if err != nil || d != nil || p == nil {
		t.Fatalf("Begin(%s): decision %v pending %v err %v, want a pending", token, d, p, err)
	}
	return p
}

// introspected runs begin → resume with a canned AS answer.
func introspected(t testing.TB, v *Validator, token string, resp *HTTPResponse) *Decision {
	t.Helper()
	p := beginPending(t, v, token)
	defer p.Close()
	d, err := p.Resume(time.Now(), resp)
	if err != nil || d == nil {
		t.Fatalf("Resume: %v", err)
	}
	return d
}

func status(d *Decision) int {
	s, err := d.Status()
	if err != nil {
		return 0
	}
	return s
}

func reason(d *Decision) string {
	r, _ := d.Reason()
	return r
}

func allowedAs(d *Decision, sub string) bool {
	ok, _ := d.Allowed()
	s, _ := d.Subject()
	return ok && s == sub
}

func TestInvalidConfigNamesTheField(t *testing.T) {
	_, err := New(`{"resource": "https://mcp.example.com/mcp", "authorization_servers": ["https://as.example.com"],
	 "claim_to_header": [{"claim": "sub", "header": "Bad Header"}]}`)
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("want a ConfigError, got %v", err)
	}
	if ce.Code != ResultInvalidConfig || ce.Field != "claim_to_header[0].header" ||
		!strings.HasPrefix(ce.Message, "claim_to_header[0].header: ") {
		t.Fatalf("got %+v", ce)
	}
	_, err = New(`{"resource": `)
	if !errors.As(err, &ce) || ce.Field != "" || !strings.Contains(ce.Message, "invalid JSON") {
		t.Fatalf("malformed JSON: %+v", err)
	}
}

func TestSansIOFlow(t *testing.T) {
	v := mustNew(t, config)
	defer v.Close()

	// No credentials: 401 and the challenge pointing at the metadata.
	d, p, err := v.Begin(&Request{Method: "POST", Path: "/mcp"}, time.Now())
	if err != nil || p != nil {
		t.Fatalf("Begin: %v %v", p, err)
	}
	if s := status(d); s != 401 {
		t.Fatalf("status %d", s)
	}
	if c, _ := d.ResponseHeader("WWW-Authenticate"); c != `Bearer resource_metadata="`+metadataURL+`", scope="mcp:read"` {
		t.Fatalf("challenge %q", c)
	}
	if _, err := d.CacheTTL(); code(err) != ResultAbsent {
		t.Fatalf("cache ttl of a 401 without token: %v", err)
	}
	d.Close()
	d.Close() // idempotent

	// The pending describes the introspection call.
	p = beginPending(t, v, "go-token")
	if s, _ := p.State(); s != StateHTTP {
		t.Fatalf("state %v", s)
	}
	req, err := p.HTTPRequest()
	if err != nil {
		t.Fatal(err)
	}
	if req.Method != "POST" || req.URL != "https://as.example.com/introspect" || req.Timeout != 10*time.Second ||
		!strings.Contains(string(req.Body), "token=go-token") ||
		!containsPair(req.Headers, "Authorization", "Basic Z2F0ZXdheTpnYXRld2F5LXNlY3JldA==") {
		t.Fatalf("request %+v", req)
	}
	key, _ := p.CacheKey()
	if want, _ := v.TokenCacheKey("go-token"); len(key) != 64 || key != want || strings.Contains(key, "go-token") {
		t.Fatalf("cache key %q, token key %q", key, want)
	}
	exp := time.Now().Unix() + 600
	resumedAt := time.Now()
	d, err = p.Resume(resumedAt, jsonAnswer(fmt.Sprintf(`{"active": true, "sub": "gopher", "client_id": "app",
	 "scope": "mcp:read", "aud": "https://mcp.example.com/mcp", "exp": %d}`, exp)))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := p.State(); s != StateDone {
		t.Fatalf("state after the decision: %v", s)
	}
	// A second resume is an error, never a second decision.
	if _, err := p.Resume(time.Now(), &HTTPResponse{Status: 200}); code(err) != ResultAlreadyResumed {
		t.Fatalf("second resume: %v", err)
	}
	if _, err := p.URL(); code(err) != ResultAlreadyResumed {
		t.Fatalf("url after resume: %v", err)
	}
	p.Close()
	p.Close()
	if ok, _ := d.Allowed(); !ok {
		t.Fatal("not allowed")
	}
	if rm, _ := d.RemoveHeaders(); strings.Join(rm, ",") != "Authorization,X-User-Id,X-Email" {
		t.Fatalf("remove %v", rm)
	}
	if set, _ := d.SetHeaders(); len(set) != 1 || set[0] != [2]string{"X-User-Id", "gopher"} {
		t.Fatalf("set %v", set)
	}
	if u, _ := d.ValidUntil(); u.Unix() != exp {
		t.Fatalf("valid_until %v want %d", u, exp)
	}
	if r, _ := d.RecheckAt(); r.Unix() != exp {
		t.Fatalf("recheck_at %v want %d (the token's exp is sooner than cache_ttl_max)", r, exp)
	}
	if ttl, _ := d.CacheTTL(); ttl <= 0 || ttl > 600*time.Second {
		t.Fatalf("cache ttl %v", ttl)
	}
	if _, err := d.Status(); code(err) != ResultAbsent {
		t.Fatalf("status of a forward: %v", err)
	}
	d.Close()
	// A closed decision is a NULL handle: NULL_PARAMETER, not a crash.
	if _, err := d.Allowed(); code(err) != ResultNullParameter {
		t.Fatalf("closed decision: %v", err)
	}

	// Cache hit, then evict.
	d, p, _ = v.Begin(bearer("go-token"), time.Now())
	if d == nil || p != nil {
		t.Fatal("want a cache hit")
	}
	d.Close()
	if ok, err := v.Evict("go-token"); !ok || err != nil {
		t.Fatalf("evict: %v %v", ok, err)
	}

	// Rows of the response table (docs/configuration.md, 7.2) through canned answers.
	rows := []struct {
		token, contentType, body string
		status                   int
		want                     int
		reason                   string
		challenge                string
	}{
		{"inactive", "application/json", `{"active": false}`, 200, 401, "token_inactive", `error="invalid_token"`},
		{"expired", "application/json", `{"active": true, "exp": 1000, "aud": "https://mcp.example.com/mcp"}`, 200, 401, "token_expired", `error="invalid_token"`},
		{"wrong-aud", "application/json", `{"active": true, "aud": "https://x.example/mcp", "scope": "mcp:read"}`, 200, 401, "audience_mismatch", `error="invalid_token"`},
		{"no-scope", "application/json", `{"active": true, "aud": "https://mcp.example.com/mcp"}`, 200, 403, "insufficient_scope", `error="insufficient_scope", scope="mcp:read"`},
		{"as-500", "application/json", `{}`, 500, 503, "authorization_server_unavailable", ""},
		{"as-html", "text/html", `<html></html>`, 200, 503, "authorization_server_unavailable", ""},
	}
	for _, row := range rows {
		d := introspected(t, v, row.token, &HTTPResponse{Status: row.status,
			Headers: [][2]string{{"Content-Type", row.contentType}}, Body: []byte(row.body)})
		c, cerr := d.ResponseHeader("WWW-Authenticate")
		if status(d) != row.want || reason(d) != row.reason {
			t.Errorf("%s: %d %s, want %d %s", row.token, status(d), reason(d), row.want, row.reason)
		}
		if row.challenge == "" && code(cerr) != ResultAbsent {
			t.Errorf("%s: unexpected challenge %q", row.token, c)
		}
		if row.challenge != "" && !strings.Contains(c, row.challenge) {
			t.Errorf("%s: challenge %q lacks %q", row.token, c, row.challenge)
		}
		d.Close()
	}
	p = beginPending(t, v, "unreachable")
	d, err = p.Fail(time.Now(), TransportConnect, "refused")
	if err != nil || status(d) != 503 {
		t.Fatalf("fail: %v", err)
	}
	d.Close()
	p.Close()
	// An unknown kind is refused and the pending stays usable.
	p = beginPending(t, v, "bad-kind")
	if _, err := p.Fail(time.Now(), 77, ""); code(err) != ResultInvalidArgument {
		t.Fatalf("kind 77: %v", err)
	}
	if d, err = p.Fail(time.Now(), TransportTimeout, ""); err != nil || status(d) != 503 {
		t.Fatalf("timeout: %v", err)
	}
	d.Close()
	p.Close()

	// Invalid arguments from Go: a bad peer address.
	if _, _, err := v.Begin(&Request{Method: "GET", Path: "/mcp", PeerAddr: "nope"}, time.Now()); code(err) != ResultInvalidArgument {
		t.Fatalf("peer addr: %v", err)
	}
}

func containsPair(hs [][2]string, name, value string) bool {
	for _, h := range hs {
		if h[0] == name && h[1] == value {
			return true
		}
	}
	return false
}

// One validator shared by many goroutines through the sans-I/O flow; run under -race.
func TestConcurrentSansIO(t *testing.T) {
	v := mustNew(t, config)
	defer v.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				token := fmt.Sprintf("g%d-t%d", g, i%4)
				d, err := v.Authorize(context.Background(), bearer(token),
					func(context.Context, *HTTPRequest) (*HTTPResponse, error) { return activeAnswer(token), nil })
				if err != nil {
					errs <- err
					return
				}
				if sub, _ := d.Subject(); sub != token {
					errs <- fmt.Errorf("subject %q for %q", sub, token)
				}
				d.Close()
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// 8 goroutines begin with one new token before any answer is in: exactly one leads (HTTP),
// seven wait; half of those block in Wait, half select on Ready; one AS call, all allowed.
func TestSingleFlightSteps(t *testing.T) {
	v := mustNew(t, config)
	defer v.Close()
	const n = 8
	var calls, leaders, waiters, allowed atomic.Int32
	var begun, done sync.WaitGroup
	begun.Add(n)
	done.Add(n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		go func(i int) {
			defer done.Done()
			<-start
			d, p, err := v.Begin(bearer("tok-flight"), time.Now())
			begun.Done()
			if err != nil || d != nil {
				t.Errorf("Begin: %v %v", d, err)
				begun.Wait()
				return
			}
			defer p.Close()
			state, _ := p.State()
			var ready <-chan struct{}
			if state == StateWait && i%2 == 0 {
				if ready, err = p.Ready(); err != nil {
					t.Error(err)
				}
			}
			begun.Wait() // nobody has an answer before every request has begun
			switch state {
			case StateHTTP:
				leaders.Add(1)
				time.Sleep(30 * time.Millisecond)
				calls.Add(1)
				d, err = p.Resume(time.Now(), activeAnswer("flyer"))
			case StateWait:
				waiters.Add(1)
				if ready != nil {
					select {
					case <-ready:
					case <-time.After(30 * time.Second):
						t.Error("Ready never closed")
					}
				} else if ok, err := p.Wait(30 * time.Second); !ok || err != nil {
					t.Errorf("Wait: %v %v", ok, err)
				}
				d, err = p.Continue(time.Now())
			default:
				t.Errorf("state %v", state)
				return
			}
			if err != nil || d == nil {
				t.Errorf("decision %v err %v", d, err)
				return
			}
			if allowedAs(d, "flyer") {
				allowed.Add(1)
			}
			d.Close()
		}(i)
	}
	close(start)
	done.Wait()
	if leaders.Load() != 1 || waiters.Load() != n-1 || calls.Load() != 1 || allowed.Load() != n {
		t.Fatalf("leaders %d waiters %d AS calls %d allowed %d", leaders.Load(), waiters.Load(), calls.Load(), allowed.Load())
	}
}

// Authorize: 8 goroutines, one new token, a slow fake AS: one call, 8 allowed.
func TestAuthorizeSingleFlight(t *testing.T) {
	v := mustNew(t, config)
	defer v.Close()
	var calls atomic.Int32
	do := func(ctx context.Context, req *HTTPRequest) (*HTTPResponse, error) {
		calls.Add(1)
		if !strings.Contains(string(req.Body), "token=tok-authorize") {
			return nil, fmt.Errorf("body %q", req.Body)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return activeAnswer("authorized"), nil
	}
	var wg sync.WaitGroup
	var allowed atomic.Int32
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := v.Authorize(context.Background(), bearer("tok-authorize"), do)
			if err != nil {
				t.Error(err)
				return
			}
			if allowedAs(d, "authorized") {
				allowed.Add(1)
			}
			d.Close()
		}()
	}
	wg.Wait()
	if calls.Load() != 1 || allowed.Load() != 8 {
		t.Fatalf("AS calls %d, allowed %d", calls.Load(), allowed.Load())
	}
}

// Transport failures and cancellations are 503 decisions, never errors or 401s.
func TestAuthorizeFailures(t *testing.T) {
	v := mustNew(t, config)
	defer v.Close()
	d, err := v.Authorize(context.Background(), bearer("tok-down"), func(context.Context, *HTTPRequest) (*HTTPResponse, error) {
		return nil, &TransportError{Kind: TransportTLS, Err: errors.New("certificate unknown")}
	})
	if err != nil || status(d) != 503 || reason(d) != "authorization_server_unavailable" {
		t.Fatalf("TLS failure: %d %s %v", status(d), reason(d), err)
	}
	d.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d, err = v.Authorize(ctx, bearer("tok-cancelled"), func(ctx context.Context, _ *HTTPRequest) (*HTTPResponse, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	if err != nil || status(d) != 503 {
		t.Fatalf("cancelled: %d %v", status(d), err)
	}
	d.Close()
	// A waiter whose context ends stops waiting with a 503; the leader is unaffected.
	leader := beginPending(t, v, "tok-slow")
	defer leader.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	d, err = v.Authorize(ctx, bearer("tok-slow"), func(context.Context, *HTTPRequest) (*HTTPResponse, error) {
		t.Error("a waiter performed a call")
		return nil, errors.New("unexpected")
	})
	if err != nil || status(d) != 503 {
		t.Fatalf("waiter with a deadline: %d %v", status(d), err)
	}
	if detail, _ := d.Detail(); !strings.Contains(detail, "gave up waiting") {
		t.Fatalf("detail %q", detail)
	}
	d.Close()
	if d, err = leader.Resume(time.Now(), activeAnswer("slow")); err != nil || !allowedAs(d, "slow") {
		t.Fatalf("leader: %v", err)
	}
	d.Close()
}

// Calls in the wrong state; a leader closed unresumed releases its waiters with a 503.
func TestStatesAndAbandonedLeader(t *testing.T) {
	v := mustNew(t, config)
	defer v.Close()
	leader := beginPending(t, v, "tok-abandon")
	waiter := beginPending(t, v, "tok-abandon")
	defer waiter.Close()
	if s, _ := waiter.State(); s != StateWait {
		t.Fatalf("waiter state %v", s)
	}
	if _, err := waiter.HTTPRequest(); code(err) != ResultWrongState {
		t.Fatalf("HTTPRequest on a waiter: %v", err)
	}
	if _, err := waiter.Resume(time.Now(), activeAnswer("x")); code(err) != ResultWrongState {
		t.Fatalf("Resume on a waiter: %v", err)
	}
	if _, err := leader.Continue(time.Now()); code(err) != ResultWrongState {
		t.Fatalf("Continue on a leader: %v", err)
	}
	if _, err := leader.Ready(); code(err) != ResultWrongState {
		t.Fatalf("Ready on a leader: %v", err)
	}
	if ok, _ := waiter.IsReady(); ok {
		t.Fatal("ready before the leader answered")
	}
	ready, err := waiter.Ready()
	if err != nil {
		t.Fatal(err)
	}
	leader.Close()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("closing the leader did not release the waiter")
	}
	d, err := waiter.Continue(time.Now())
	if err != nil || status(d) != 503 {
		t.Fatalf("released waiter: %d %v", status(d), err)
	}
	if detail, _ := d.Detail(); !strings.Contains(detail, "abandoned") {
		t.Fatalf("detail %q", detail)
	}
	d.Close()
}

// What hosts read from the policy and from an allowed decision.
func TestPolicyAndDecisionAccessors(t *testing.T) {
	v := mustNew(t, config)
	defer v.Close()
	if reads, _ := v.Reads(); reads != 0 {
		t.Fatalf("reads %d", reads)
	}
	if size, _ := v.MaxRequestBodySize(); size != 1<<20 {
		t.Fatalf("max body %d", size)
	}
	if rm, _ := v.RemoveHeaders(); strings.Join(rm, ",") != "Authorization,X-User-Id,X-Email" {
		t.Fatalf("remove %v", rm)
	}
	if ch, _ := v.ClaimHeaders(); strings.Join(ch, ",") != "X-User-Id,X-Email" {
		t.Fatalf("claim headers %v", ch)
	}
	if doc, _ := v.MetadataDocument(); !strings.Contains(string(doc), `"resource":"https://mcp.example.com/mcp"`) {
		t.Fatalf("metadata %s", doc)
	}
	d := introspected(t, v, "tok-accessors", activeAnswer("alice"))
	defer d.Close()
	for name, want := range map[string]bool{"X_User_Id": true, "x-user-id": true, "authorization": true,
		"X_Email": true, "X-User": false, "Content-Type": false} {
		if got, err := d.MustRemove(name); got != want || err != nil {
			t.Errorf("MustRemove(%s) = %v %v", name, got, err)
		}
	}
	if value, ok, err := d.ClaimHeaderValue(0); value != "alice" || !ok || err != nil {
		t.Errorf("claim 0: %q %v %v", value, ok, err)
	}
	if _, ok, err := d.ClaimHeaderValue(1); ok || err != nil {
		t.Errorf("claim 1 (no email claim): %v %v", ok, err)
	}
	if _, _, err := d.ClaimHeaderValue(2); code(err) != ResultOutOfRange {
		t.Errorf("claim 2: %v", err)
	}
	refused, err := d.Refuse(RefuseConsumerLookupFailed)
	if err != nil || status(refused) != 503 || reason(refused) != "consumer_lookup_failed" {
		t.Fatalf("refuse: %d %s %v", status(refused), reason(refused), err)
	}
	refused.Close()
	if _, err := d.Refuse(9); code(err) != ResultInvalidArgument {
		t.Fatalf("refuse 9: %v", err)
	}
	ie, err := InternalError()
	if err != nil || status(ie) != 500 || reason(ie) != "internal_error" {
		t.Fatalf("internal error: %d %v", status(ie), err)
	}
	if body, _ := ie.Body(); !strings.Contains(string(body), `"error"`) {
		t.Fatalf("internal error body %s", body)
	}
	ie.Close()
	// The decision outlives its validator.
	v.Close()
	if !allowedAs(d, "alice") {
		t.Fatal("decision unusable after the validator was closed")
	}
}

func env(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set (scripts/test-ffi.sh starts the AS and sets it)", name)
	}
	return v
}

func asValidator(t testing.TB) *Validator {
	return mustNew(t, fmt.Sprintf(`{"resource": %q, "authorization_servers": [%q],
	 "introspection_endpoint": %q, "client_id": "gateway", "client_secret": "gateway-secret",
	 "timeout": 5000, "claim_to_header": [{"claim": "client_id", "header": "X-Client-Id"}]}`,
		env(t, "RESOURCE"), env(t, "AS_URL"), env(t, "AS_URL")+"/token/introspection"))
}

func asIntrospections(t testing.TB) int {
	t.Helper()
	resp, err := http.Get(env(t, "AS_URL") + "/__test/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stats struct{ Introspections int }
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		t.Fatal(err)
	}
	return stats.Introspections
}

// Authorize with net/http against the real oidc-provider AS: 8 goroutines and one new
// token make one introspection.
func TestAuthorizeRealAS(t *testing.T) {
	v := asValidator(t)
	defer v.Close()
	before := asIntrospections(t)
	var wg sync.WaitGroup
	var allowed atomic.Int32
	start := make(chan struct{})
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			d, err := v.Authorize(context.Background(), bearer(env(t, "TOKEN_GO")), NetHTTP(nil))
			if err != nil {
				t.Error(err)
				return
			}
			if set, _ := d.SetHeaders(); len(set) == 1 && set[0] == [2]string{"X-Client-Id", "app"} {
				allowed.Add(1)
			} else {
				t.Errorf("%d %s %v", status(d), reason(d), set)
			}
			d.Close()
		}()
	}
	close(start)
	wg.Wait()
	if after := asIntrospections(t); allowed.Load() != 8 || after != before+1 {
		t.Fatalf("allowed %d, introspections %d -> %d", allowed.Load(), before, after)
	}
	d, err := v.Authorize(context.Background(), bearer(env(t, "TOKEN_NO_AUD")), NetHTTP(nil))
	if err != nil || status(d) != 401 || reason(d) != "audience_mismatch" {
		t.Fatalf("no aud: %d %s %v", status(d), reason(d), err)
	}
	d.Close()
}

// The library's built-in blocking client against the real AS.
func TestAuthorizeBuiltin(t *testing.T) {
	v := asValidator(t)
	defer v.Close()
	d, err := v.AuthorizeBuiltin(bearer(env(t, "TOKEN")))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := d.Allowed(); !ok {
		t.Fatalf("not allowed: %s", reason(d))
	}
	if set, _ := d.SetHeaders(); len(set) != 1 || set[0] != [2]string{"X-Client-Id", "app"} {
		t.Fatalf("set %v", set)
	}
	if s, _ := d.Scope(); s != "mcp:read mcp:write" {
		t.Fatalf("scope %q", s)
	}
	d.Close()
	d, _ = v.AuthorizeBuiltin(bearer(env(t, "TOKEN_NO_AUD")))
	if status(d) != 401 || reason(d) != "audience_mismatch" {
		t.Fatalf("no aud: %d %s", status(d), reason(d))
	}
	d.Close()
}

// Many goroutines through the built-in client and one validator, under -race.
func TestConcurrentBuiltin(t *testing.T) {
	v := asValidator(t)
	defer v.Close()
	var wg sync.WaitGroup
	var allowed atomic.Int32
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				d, err := v.AuthorizeBuiltin(bearer(os.Getenv("TOKEN_THREADS")))
				if err != nil {
					t.Error(err)
					return
				}
				if ok, _ := d.Allowed(); ok {
					allowed.Add(1)
				}
				d.Close()
			}
		}()
	}
	wg.Wait()
	if allowed.Load() != 16*20 {
		t.Fatalf("allowed %d of %d", allowed.Load(), 16*20)
	}
	// Close while nothing is in flight, twice: safe.
	v.Close()
	v.Close()
	if _, err := v.AuthorizeBuiltin(bearer("x")); code(err) != ResultNullParameter {
		t.Fatalf("after close: %v", err)
	}
}
