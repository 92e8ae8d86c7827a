package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TokenFile is a set of bearer tokens read from a file, one per line (blank
// lines and lines starting with # are ignored). A line NAME:TOKEN names its
// token: NAME (letters, digits, '.', '_' and '-') is the caller's identity
// for egress rule sets, "token:NAME"; a line without a colon is an unnamed
// token. Reload and ReloadIfChanged swap in a new set atomically, so tokens
// rotate without a restart and a request never sees a half-read file.
type TokenFile struct {
	path   string
	tokens atomic.Pointer[[]namedToken]

	mu      sync.Mutex // guards the following fields and serializes reloads
	modTime time.Time
	size    int64
}

// LoadTokenFile reads path. A file with no token is an error: it would lock
// every caller out, which is never what an operator meant.
func LoadTokenFile(path string) (*TokenFile, error) {
	f := &TokenFile{path: path}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Path is the file the tokens come from.
func (f *TokenFile) Path() string { return f.path }

// Reload rereads the file. On error the previous tokens stay in force.
func (f *TokenFile) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloadLocked()
}

// ReloadIfChanged rereads the file when its size or modification time
// changed since the last read.
func (f *TokenFile) ReloadIfChanged() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := os.Stat(f.path)
	if err != nil {
		return fmt.Errorf("token file %s: %w", f.path, err)
	}
	if st.ModTime().Equal(f.modTime) && st.Size() == f.size {
		return nil
	}
	return f.reloadLocked()
}

func (f *TokenFile) reloadLocked() error {
	st, err := os.Stat(f.path)
	if err != nil {
		return fmt.Errorf("token file %s: %w", f.path, err)
	}
	raw, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("token file %s: %w", f.path, err)
	}
	var tokens []namedToken
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, token, named := strings.Cut(line, ":")
		if !named {
			name, token = "", line
		}
		if named && !validTokenName(name) {
			return fmt.Errorf("token file %s: line %d: %q is not a token name (letters, digits, '.', '_' and '-')", f.path, n, name)
		}
		if token == "" {
			return fmt.Errorf("token file %s: line %d: no token after the name", f.path, n)
		}
		tokens = append(tokens, namedToken{name: name, token: []byte(token)})
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("token file %s: %w", f.path, err)
	}
	if len(tokens) == 0 {
		return fmt.Errorf("token file %s: holds no token", f.path)
	}
	f.tokens.Store(&tokens)
	f.modTime, f.size = st.ModTime(), st.Size()
	return nil
}

// namedToken is one line of a token file.
type namedToken struct {
	name  string // "" for an unnamed token
	token []byte
}

// validTokenName reports whether name may name a token.
func validTokenName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// Valid reports whether token is one of the file's.
func (f *TokenFile) Valid(token string) bool {
	_, ok := f.Lookup(token)
	return ok
}

// Lookup reports whether token is one of the file's, and its name ("" for
// an unnamed one). It compares against every token in constant time, so
// timing reveals neither the token nor which one matched.
func (f *TokenFile) Lookup(token string) (name string, ok bool) {
	match := -1
	for i, t := range *f.tokens.Load() {
		eq := subtle.ConstantTimeCompare(t.token, []byte(token))
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return "", false
	}
	return (*f.tokens.Load())[match].name, true
}

// authRule guards the services it names with tokens.
type authRule struct {
	services map[string]bool
	tokens   *TokenFile
}

// authInterceptors returns one auth interceptor per rule, each applied only
// to its services through a selector; health and reflection match no rule
// and stay open.
func authInterceptors(rules ...authRule) ([]grpc.UnaryServerInterceptor, []grpc.StreamServerInterceptor) {
	var unary []grpc.UnaryServerInterceptor
	var stream []grpc.StreamServerInterceptor
	for _, r := range rules {
		if r.tokens == nil {
			continue
		}
		check := tokenCheck(r.tokens)
		match := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
			return r.services[c.Service]
		})
		unary = append(unary, selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(check), match))
		stream = append(stream, selector.StreamServerInterceptor(auth.StreamServerInterceptor(check), match))
	}
	return unary, stream
}

// tokenCheck answers UNAUTHENTICATED when no bearer token was sent and
// PERMISSION_DENIED when the token is not one of the file's.
func tokenCheck(tokens *TokenFile) auth.AuthFunc {
	return func(ctx context.Context) (context.Context, error) {
		token, err := auth.AuthFromMD(ctx, "bearer")
		if err != nil {
			var st interface{ GRPCStatus() *status.Status }
			if errors.As(err, &st) {
				return nil, status.Error(codes.Unauthenticated, "missing \"authorization: Bearer <token>\" metadata")
			}
			return nil, err
		}
		name, ok := tokens.Lookup(token)
		if !ok {
			return nil, status.Error(codes.PermissionDenied, "bearer token not accepted")
		}
		if name != "" {
			ctx = withTokenName(ctx, name)
		}
		return ctx, nil
	}
}
