package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
)

// RepoRoot is the repository's top folder.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var installTools struct {
	once sync.Once
	out  []byte
	err  error
}

// Tool finds the test server name (versitygw, pebble, ferretdb, h2spec) in
// $TOOLS_DIR, <repo>/tools or PATH, taking the first candidate usable
// accepts (nil: any executable file); when none is, it runs
// scripts/install-test-tools once per test binary and looks again. CI
// installs the tools first; this keeps a fresh checkout's `make test`
// working.
func Tool(name string, usable func(path string) bool) (string, error) {
	find := func() string {
		var cands []string
		if d := os.Getenv("TOOLS_DIR"); d != "" {
			cands = append(cands, filepath.Join(d, name))
		}
		cands = append(cands, filepath.Join(RepoRoot(), "tools", name))
		if p, err := exec.LookPath(name); err == nil {
			cands = append(cands, p)
		}
		for _, p := range cands {
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 && (usable == nil || usable(p)) {
				return p
			}
		}
		return ""
	}
	if p := find(); p != "" {
		return p, nil
	}
	script := filepath.Join(RepoRoot(), "scripts", "install-test-tools")
	installTools.once.Do(func() {
		installTools.out, installTools.err = exec.Command("bash", script).CombinedOutput()
	})
	if installTools.err != nil {
		return "", fmt.Errorf("%s missing and %s failed: %v\n%s", name, script, installTools.err, installTools.out)
	}
	if p := find(); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in $TOOLS_DIR, %s/tools or PATH after %s ran", name, RepoRoot(), script)
}
