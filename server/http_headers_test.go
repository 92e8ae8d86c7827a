package server

import (
	"net/http"
	"testing"

	"google.golang.org/protobuf/proto"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

func TestHeaderValuesThatAreNotUTF8AreReadAsLatin1(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"ascii", "text/plain", "text/plain"},
		{"utf-8 kept as is", "caf\u00e9", "caf\u00e9"},
		{"latin-1 byte", "caf\xe9", "caf\u00e9"},
		{"high bytes only", "\xff\x80", "\u00ff\u0080"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fields := headerFields(http.Header{"X-Test": {tt.in}})
			if len(fields) != 1 || fields[0].GetValue() != tt.want {
				t.Fatalf("headerFields(%q) = %v, want value %q", tt.in, fields, tt.want)
			}
			// What matters to the caller: the response still marshals.
			if _, err := proto.Marshal(&pooldv1.DoResponse{Headers: fields}); err != nil {
				t.Errorf("marshalling a response with header %q: %v", tt.in, err)
			}
		})
	}
}
