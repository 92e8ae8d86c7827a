package main

import (
	"bytes"
	"testing"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want procStat
	}{
		{
			name: "plain",
			in:   "9335 (cat) R 9333 9333 5676 0 -1 4194304 102 0 0 0 7 3 0 0 20 0 1 0 4538414 3133440 415\n",
			want: procStat{comm: "cat", state: 'R', ppid: 9333, utime: 7, stime: 3},
		},
		{
			name: "comm with spaces and parentheses",
			in:   "42 (a) b (c)) S 1 42 42 0 -1 0 0 0 0 0 1234 56 0 0 20 0 9 0 1 2 3",
			want: procStat{comm: "a) b (c)", state: 'S', ppid: 1, utime: 1234, stime: 56},
		},
		{
			name: "empty comm",
			in:   "7 () Z 2 0 0 0 0 0 0 0 0 0 0 0",
			want: procStat{comm: "", state: 'Z', ppid: 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.in))
			if err != nil {
				t.Fatalf("parseStat: %v", err)
			}
			if got != tt.want {
				t.Errorf("parseStat = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseStatRejects(t *testing.T) {
	for _, in := range []string{
		"",
		"1 cat R 1 1 1 0 -1 0 0 0 0 0 1 2",
		"1 (cat R 1 1 1 0 -1 0 0 0 0 0 1 2",
		"1 (cat) R 1 1 1",
		"1 (cat) R x 1 1 0 -1 0 0 0 0 0 1 2",
		"1 (cat) R 1 1 1 0 -1 0 0 0 0 0 -1 2",
		"1 (cat) RR 1 1 1 0 -1 0 0 0 0 0 1 2",
		"1 )cat( R 1 1 1 0 -1 0 0 0 0 0 1 2",
	} {
		if st, err := parseStat([]byte(in)); err == nil {
			t.Errorf("parseStat(%q) = %+v, want an error", in, st)
		}
	}
}

func TestReadStatSelf(t *testing.T) {
	if _, err := readStat(1); err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	tree, err := processTree(1)
	if err != nil || len(tree) == 0 || tree[0] != 1 {
		t.Fatalf("processTree(1) = %v, %v", tree, err)
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("9335 (cat) R 9333 9333 5676 0 -1 4194304 102 0 0 0 7 3 0 0 20 0 1 0 4538414"))
	f.Add([]byte("42 (a) b (c)) S 1 42 42 0 -1 0 0 0 0 0 1234 56 0 0"))
	f.Add([]byte("1 ()) R 1 1 1 0 -1 0 0 0 0 0 1 2"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStat(b)
		if err != nil {
			return
		}
		// Whatever parsed, comm is exactly what lies between the first '('
		// and the last ')': a ')' inside the name never shifts the numeric
		// fields after it.
		open := bytes.IndexByte(b, '(')
		end := bytes.LastIndexByte(b, ')')
		if st.comm != string(b[open+1:end]) {
			t.Fatalf("comm %q, want %q", st.comm, b[open+1:end])
		}
		if !bytes.HasPrefix(bytes.TrimLeft(b[end+1:], " \t\n\v\f\r"), []byte{st.state}) {
			t.Fatalf("state %q is not the first field after comm in %q", st.state, b)
		}
	})
}
