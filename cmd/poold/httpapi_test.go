package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A caller with nothing but an HTTP client: a JSON POST to the daemon's
// --http-api-listen runs Do, and an egress denial comes back as HTTP 403
// with its reason.
func TestTheDaemonServesDoAsJSONOverHTTP(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "warm")
	}))
	defer up.Close()
	d := startDaemon(t, "--http-api-listen=127.0.0.1:0")
	if d.apiAddr == "" {
		t.Fatal("the daemon reported no http_api address")
	}
	for _, tc := range []struct {
		url    string
		status int
		want   string
	}{
		{up.URL + "/", http.StatusOK, `"body":"d2FybQ=="`},
		{"http://169.254.169.254/latest/meta-data/", http.StatusForbidden, "EGRESS_DENIED"},
	} {
		resp, err := http.Post("http://"+d.apiAddr+"/poold.v1.HTTPService/Do", "application/json", strings.NewReader(`{"url":"`+tc.url+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(raw), tc.want) || !json.Valid(raw) {
			t.Errorf("POST Do %s = %d %s; want %d with %s", tc.url, resp.StatusCode, raw, tc.status, tc.want)
		}
	}
}
