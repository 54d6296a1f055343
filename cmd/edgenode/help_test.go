package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestRestoreHelp: the help names both kinds of restore, and --from is
// not required for a point-in-time one.
func TestRestoreHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"help"}, &out, &out); code != 0 {
		t.Fatalf("help: exit %d", code)
	}
	for _, want := range []string{"restore --from DIR|s3://BUCKET/PREFIX", "restore --to-time T|--to-op ORIGIN:SEQ", "--dump DIR"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("edgenode help lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	run([]string{"restore", "-h"}, &out, &out)
	help := out.String()
	if !strings.Contains(help, "--to-time T|--to-op ORIGIN:SEQ [--from") || !strings.Contains(help, "required unless --to-time/--to-op") {
		t.Errorf("restore -h does not say --from is optional for a point-in-time restore:\n%s", help)
	}
}
