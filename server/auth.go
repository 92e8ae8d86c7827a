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
// lines and lines starting with # are ignored). Reload and ReloadIfChanged
// swap in a new set atomically, so tokens rotate without a restart and a
// request never sees a half-read file.
type TokenFile struct {
	path   string
	tokens atomic.Pointer[[][]byte]

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
	var tokens [][]byte
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		tokens = append(tokens, []byte(line))
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

// Valid reports whether token is one of the file's. It compares against
// every token in constant time, so timing reveals neither the token nor
// which one matched.
func (f *TokenFile) Valid(token string) bool {
	ok := 0
	for _, t := range *f.tokens.Load() {
		ok |= subtle.ConstantTimeCompare(t, []byte(token))
	}
	return ok == 1
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
		if !tokens.Valid(token) {
			return nil, status.Error(codes.PermissionDenied, "bearer token not accepted")
		}
		return ctx, nil
	}
}
