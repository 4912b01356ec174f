package mcpoauth2

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

const config = `{"resource": "https://mcp.example.com/mcp",
 "authorization_servers": ["https://as.example.com"],
 "introspection_endpoint": "https://as.example.com/introspect",
 "client_id": "gateway", "client_secret": "gateway-secret",
 "scopes_required": ["mcp:read"],
 "claim_to_header": [{"claim": "sub", "header": "X-User-Id"}]}`

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

// introspected runs begin → resume with a canned AS answer.
func introspected(t testing.TB, v *Validator, token string, status uint16, contentType, body string) *Decision {
	t.Helper()
	d, p, err := v.Begin(bearer(token))
	if err != nil || d != nil || p == nil {
		t.Fatalf("Begin(%s): decision %v pending %v err %v, want a pending", token, d, p, err)
	}
	defer p.Close()
	d, err = p.Resume(status, [][2]string{{"Content-Type", contentType}}, []byte(body))
	if err != nil || d == nil {
		t.Fatalf("Resume: %v", err)
	}
	return d
}

func status(t testing.TB, d *Decision) int {
	t.Helper()
	s, err := d.Status()
	if err != nil {
		return 0
	}
	return s
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
	d, p, err := v.Begin(&Request{Method: "POST", Path: "/mcp"})
	if err != nil || p != nil {
		t.Fatalf("Begin: %v %v", p, err)
	}
	if s := status(t, d); s != 401 {
		t.Fatalf("status %d", s)
	}
	if c, _ := d.ResponseHeader("WWW-Authenticate"); c != `Bearer resource_metadata="`+metadataURL+`", scope="mcp:read"` {
		t.Fatalf("challenge %q", c)
	}
	d.Close()
	d.Close() // idempotent

	// The pending describes the introspection call.
	_, p, err = v.Begin(bearer("go-token"))
	if err != nil || p == nil {
		t.Fatal("want a pending")
	}
	if m, _ := p.Method(); m != "POST" {
		t.Fatalf("method %q", m)
	}
	if u, _ := p.URL(); u != "https://as.example.com/introspect" {
		t.Fatalf("url %q", u)
	}
	if b, _ := p.Body(); !strings.Contains(string(b), "token=go-token") {
		t.Fatalf("body %q", b)
	}
	if ms, _ := p.TimeoutMs(); ms != 10000 {
		t.Fatalf("timeout %d", ms)
	}
	hs, _ := p.Headers()
	if !containsPair(hs, "Authorization", "Basic Z2F0ZXdheTpnYXRld2F5LXNlY3JldA==") {
		t.Fatalf("headers %v", hs)
	}
	key, _ := p.CacheKey()
	if len(key) != 64 || strings.Contains(key, "go-token") {
		t.Fatalf("cache key %q", key)
	}
	exp := time.Now().Unix() + 600
	d, err = p.Resume(200, [][2]string{{"Content-Type", "application/json"}},
		[]byte(fmt.Sprintf(`{"active": true, "sub": "gopher", "client_id": "app", "scope": "mcp:read",
		 "aud": "https://mcp.example.com/mcp", "exp": %d}`, exp)))
	if err != nil {
		t.Fatal(err)
	}
	// A second resume is an error, never a second decision.
	if _, err := p.Resume(200, nil, nil); code(err) != ResultAlreadyResumed {
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
	if rm, _ := d.RemoveHeaders(); strings.Join(rm, ",") != "Authorization,X-User-Id" {
		t.Fatalf("remove %v", rm)
	}
	if set, _ := d.SetHeaders(); len(set) != 1 || set[0] != [2]string{"X-User-Id", "gopher"} {
		t.Fatalf("set %v", set)
	}
	if u, _ := d.ValidUntil(); u != exp {
		t.Fatalf("valid_until %d want %d", u, exp)
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
	d, p, _ = v.Begin(bearer("go-token"))
	if d == nil || p != nil {
		t.Fatal("want a cache hit")
	}
	d.Close()
	if ok, err := v.Evict("go-token"); !ok || err != nil {
		t.Fatalf("evict: %v %v", ok, err)
	}

	// Rows of behaviour.md §6 through canned answers.
	rows := []struct {
		token, contentType, body string
		status                   uint16
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
		d := introspected(t, v, row.token, row.status, row.contentType, row.body)
		reason, _ := d.Reason()
		c, cerr := d.ResponseHeader("WWW-Authenticate")
		if status(t, d) != row.want || reason != row.reason {
			t.Errorf("%s: %d %s, want %d %s", row.token, status(t, d), reason, row.want, row.reason)
		}
		if row.challenge == "" && code(cerr) != ResultAbsent {
			t.Errorf("%s: unexpected challenge %q", row.token, c)
		}
		if row.challenge != "" && !strings.Contains(c, row.challenge) {
			t.Errorf("%s: challenge %q lacks %q", row.token, c, row.challenge)
		}
		d.Close()
	}
	_, p, _ = v.Begin(bearer("unreachable"))
	d, err = p.Fail(TransportConnect, "refused")
	if err != nil || status(t, d) != 503 {
		t.Fatalf("fail: %v", err)
	}
	d.Close()
	p.Close()
	// An unknown kind is refused and the pending stays usable.
	_, p, _ = v.Begin(bearer("bad-kind"))
	if _, err := p.Fail(77, ""); code(err) != ResultInvalidArgument {
		t.Fatalf("kind 77: %v", err)
	}
	if d, err = p.Fail(TransportTimeout, ""); err != nil || status(t, d) != 503 {
		t.Fatalf("timeout: %v", err)
	}
	d.Close()
	p.Close()

	// Invalid arguments from Go: a bad peer address.
	if _, _, err := v.Begin(&Request{Method: "GET", Path: "/mcp", PeerAddr: "nope"}); code(err) != ResultInvalidArgument {
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

// One validator shared by many goroutines through the sans-I/O flow (the C ABI promises
// that every const-validator function is thread-safe); run under -race.
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
				d, p, err := v.Begin(bearer(token))
				if err != nil {
					errs <- err
					return
				}
				if p != nil {
					d, err = p.Resume(200, [][2]string{{"Content-Type", "application/json"}}, []byte(
						`{"active": true, "sub": "`+token+`", "scope": "mcp:read", "aud": "https://mcp.example.com/mcp"}`))
					p.Close()
					if err != nil {
						errs <- err
						return
					}
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

// The blocking flow against the real oidc-provider AS.
func TestBlockingFlow(t *testing.T) {
	v := asValidator(t)
	defer v.Close()
	d, err := v.Authorize(bearer(env(t, "TOKEN")))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := d.Allowed(); !ok {
		r, _ := d.Reason()
		t.Fatalf("not allowed: %s", r)
	}
	if set, _ := d.SetHeaders(); len(set) != 1 || set[0] != [2]string{"X-Client-Id", "app"} {
		t.Fatalf("set %v", set)
	}
	if s, _ := d.Scope(); s != "mcp:read mcp:write" {
		t.Fatalf("scope %q", s)
	}
	d.Close()
	d, _ = v.Authorize(bearer(env(t, "TOKEN_NO_AUD")))
	if r, _ := d.Reason(); status(t, d) != 401 || r != "audience_mismatch" {
		t.Fatalf("no aud: %d %s", status(t, d), r)
	}
	d.Close()
}

// Many goroutines authorizing through one validator against the AS, under -race.
func TestConcurrentBlocking(t *testing.T) {
	v := asValidator(t)
	defer v.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				d, err := v.Authorize(bearer(os.Getenv("TOKEN_THREADS")))
				if err != nil {
					t.Error(err)
					return
				}
				if ok, _ := d.Allowed(); ok {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
				d.Close()
			}
		}()
	}
	wg.Wait()
	if allowed != 16*20 {
		t.Fatalf("allowed %d of %d", allowed, 16*20)
	}
	// Close while nothing is in flight, twice: safe.
	v.Close()
	v.Close()
	if _, err := v.Authorize(bearer("x")); code(err) != ResultNullParameter {
		t.Fatalf("after close: %v", err)
	}
}
