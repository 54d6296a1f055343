package node

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEnsureFleetSecret(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, fleetSecretFile)
	v, made, err := ensureFleetSecret(path)
	if err != nil || !made {
		t.Fatalf("first call: made=%v err=%v", made, err)
	}
	if raw, err := base64.StdEncoding.DecodeString(string(v)); err != nil || len(raw) != 32 {
		t.Errorf("secret %q: not 32 bytes in base64 (%v)", v, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	again, made, err := ensureFleetSecret(path)
	if err != nil || made || string(again) != string(v) {
		t.Errorf("second call: %q made=%v err=%v, want the first secret", again, made, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}

	if err := os.WriteFile(path, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ensureFleetSecret(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("a short secret file: %v", err)
	}
}
