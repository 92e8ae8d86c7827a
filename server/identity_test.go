package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A token line NAME:TOKEN names its caller; a line without a colon is an
// unnamed token, as token files were before names.
func TestTokenFilesNameTheirTokens(t *testing.T) {
	f := writeTokenFile(t, "# ops", "billing:s3cret", "plain-token")
	for _, tc := range []struct{ token, name string }{
		{"s3cret", "billing"},
		{"plain-token", ""},
	} {
		if name, ok := f.Lookup(tc.token); !ok || name != tc.name {
			t.Errorf("Lookup(%q) = %q, %v; want %q, true", tc.token, name, ok, tc.name)
		}
	}
	for _, bad := range []string{"billing:s3cret", "billing", "s3cret:"} {
		if _, ok := f.Lookup(bad); ok && bad != "s3cret" {
			t.Errorf("Lookup(%q) accepted", bad)
		}
	}
	for _, tc := range []struct{ line, want string }{
		{"bad name:tok", "not a token name"},
		{"name:", "no token after the name"},
	} {
		path := filepath.Join(t.TempDir(), "tokens")
		if err := os.WriteFile(path, []byte(tc.line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadTokenFile(path); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("LoadTokenFile with %q: %v, want an error naming line 1: %s", tc.line, err, tc.want)
		}
	}
}
