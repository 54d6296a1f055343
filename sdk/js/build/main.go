// Command build writes sdk/js/dist/{version}/ from sdk/js/src/edgenode.mjs:
// the module as it is and its classic-script form. Run it with
// `go generate ./sdk` after a change to the source, with a new version in
// the source: a released version's files never change.
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edgenode/edgenode/sdk"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sdk build:", err)
		os.Exit(1)
	}
}

func run() error {
	src, err := os.ReadFile(filepath.Join("js", "src", "edgenode.mjs"))
	if err != nil {
		return fmt.Errorf("read the source (run from sdk/, as go generate does): %w", err)
	}
	v, err := sdk.Version(src)
	if err != nil {
		return err
	}
	classic, err := sdk.Classic(src)
	if err != nil {
		return err
	}
	dir := filepath.Join("js", "dist", v)
	files := map[string][]byte{"edgenode.mjs": src, "edgenode.js": classic}
	if old, err := os.ReadFile(filepath.Join(dir, "edgenode.mjs")); err == nil && !bytes.Equal(old, src) && os.Getenv("SDK_REBUILD") != "1" {
		return fmt.Errorf("version %s is released with other bytes: raise the version in js/src/edgenode.mjs (SDK_REBUILD=1 overwrites, only for a version never served)", v)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("sdk: wrote %s (edgenode.mjs %d bytes, edgenode.js %d bytes)\n", dir, len(src), len(classic))
	return nil
}
