package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The shipped unit carries the hardening the security review asked for and
// systemd itself accepts every line of it (systemd-analyze verify prints a
// warning for an unknown or misspelt key, and still exits 0: any output
// fails the test). On b9c4b6e the unit had no memory, task or core-dump
// bounds and left /proc and IPC objects visible.
func TestSystemdUnitIsHardenedAndVerifies(t *testing.T) {
	unit := "../../configs/edgenode.service"
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		have[k] = append(have[k], v)
	}
	for k, want := range map[string]string{
		"LimitCORE": "0", "ProtectProc": "invisible", "ProcSubset": "pid", "RemoveIPC": "yes",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "PrivateDevices": "yes",
	} {
		if len(have[k]) != 1 || have[k][0] != want {
			t.Errorf("%s=%v, want %s", k, have[k], want)
		}
	}
	// Per-host EDGENODE_ variables (package config), optional ("-").
	if e := have["EnvironmentFile"]; len(e) != 1 || e[0] != "-/etc/default/edgenode" {
		t.Errorf("EnvironmentFile=%v, want -/etc/default/edgenode", e)
	}
	for _, k := range []string{"MemoryMax", "MemoryHigh", "TasksMax"} {
		if len(have[k]) != 1 || have[k][0] == "" || have[k][0] == "infinity" {
			t.Errorf("%s=%v: want a bound", k, have[k])
		}
	}

	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze not installed (apt package systemd; .ci/run installs it)")
		}
		t.Skip("systemd-analyze not installed (apt package systemd)")
	}
	// verify checks that the executables exist: point them at the test binary.
	dir := t.TempDir()
	copyPath := filepath.Join(dir, "edgenode.service")
	if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(string(b), "/usr/bin/edgenode", binPath)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", copyPath).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
