package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// procStat is the part of /proc/PID/stat the benchmark reads.
type procStat struct {
	comm  string
	state byte
	ppid  int
	utime uint64 // clock ticks spent in user mode
	stime uint64 // clock ticks spent in kernel mode
}

// parseStat parses the contents of /proc/PID/stat.
//
// The second field, comm, is the executable name in parentheses, and the name
// itself may hold spaces and parentheses: "1 (a) b) R ..." is legal. The only
// reliable split is at the LAST ')', after which every field is a number or
// the one-letter state.
func parseStat(b []byte) (procStat, error) {
	var st procStat
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return st, errors.New("stat: no (comm) field")
	}
	st.comm = string(b[open+1 : end])
	// Fields after comm start at field 3 (state); utime and stime are
	// fields 14 and 15, so index 11 and 12 here.
	fields := strings.Fields(string(b[end+1:]))
	if len(fields) < 13 {
		return st, fmt.Errorf("stat: %d fields after comm, want at least 13", len(fields))
	}
	if len(fields[0]) != 1 {
		return st, fmt.Errorf("stat: state %q is not one letter", fields[0])
	}
	st.state = fields[0][0]
	var err error
	if st.ppid, err = strconv.Atoi(fields[1]); err != nil {
		return st, fmt.Errorf("stat: ppid: %w", err)
	}
	if st.utime, err = strconv.ParseUint(fields[11], 10, 64); err != nil {
		return st, fmt.Errorf("stat: utime: %w", err)
	}
	if st.stime, err = strconv.ParseUint(fields[12], 10, 64); err != nil {
		return st, fmt.Errorf("stat: stime: %w", err)
	}
	return st, nil
}

// readStat reads and parses /proc/PID/stat.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// clockTicks returns CLK_TCK, the unit of utime and stime. It is 100 on
// every Linux build in practice, which is the fallback when getconf is
// missing.
func clockTicks() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
}

// cpuMeter reads the CPU time of a set of processes.
type cpuMeter struct {
	ticksPerSecond int64
}

// cpu returns the user plus system time of every pid, summed.
func (m cpuMeter) cpu(pids []int) (time.Duration, error) {
	var ticks uint64
	for _, pid := range pids {
		st, err := readStat(pid)
		if err != nil {
			return 0, fmt.Errorf("cpu of pid %d: %w", pid, err)
		}
		ticks += st.utime + st.stime
	}
	return time.Duration(ticks) * time.Second / time.Duration(m.ticksPerSecond), nil
}

// processTree returns root and its direct children: nginx's master and its
// workers. /proc/PID/task/PID/children needs a kernel option that not every
// kernel has, so the fallback scans every process's parent pid.
func processTree(root int) ([]int, error) {
	pids := []int{root}
	r := strconv.Itoa(root)
	if b, err := os.ReadFile(filepath.Join("/proc", r, "task", r, "children")); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return pids, nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == root {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // it exited while we looked
		}
		if st.ppid == root {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
