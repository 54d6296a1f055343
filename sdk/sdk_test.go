package sdk

import (
	"bytes"
	"compress/gzip"
	"os"
	"path"
	"regexp"
	"strings"
	"testing"

	"github.com/dop251/goja"
)

// TestDistIsBuilt: the served files of the source's version are the source
// and its classic build, byte for byte. A source changed without running
// `go generate ./sdk` (and raising the version) fails here.
func TestDistIsBuilt(t *testing.T) {
	v, err := Version(Source)
	if err != nil {
		t.Fatal(err)
	}
	mjs, err := Dist.ReadFile(path.Join("js/dist", v, "edgenode.mjs"))
	if err != nil {
		t.Fatalf("version %s is not in js/dist: run go generate ./sdk", v)
	}
	if !bytes.Equal(mjs, Source) {
		t.Fatalf("js/dist/%s/edgenode.mjs differs from js/src/edgenode.mjs: a released version never changes; raise the version and run go generate ./sdk", v)
	}
	classic, err := Classic(Source)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := Dist.ReadFile(path.Join("js/dist", v, "edgenode.js"))
	if !bytes.Equal(js, classic) {
		t.Fatalf("js/dist/%s/edgenode.js is not the build of the source: run go generate ./sdk", v)
	}
	var gz bytes.Buffer
	w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	w.Write(js)
	w.Close()
	t.Logf("edgenode.js %s: %d bytes, %d gzipped", v, len(js), gz.Len())
}

func TestClassicRefusesWhatItCannotWrap(t *testing.T) {
	for _, src := range []string{
		"export const version = \"1.0.0\";\nimport x from \"y\";\n",
		"export const version = \"1.0.0\";\nexport default function f() {}\n",
		"export const version = \"1.0.0\";\nexport { a };\n",
		"const version = 1;\n",
	} {
		if _, err := Classic([]byte(src)); err == nil {
			t.Errorf("Classic(%q): no error", src)
		}
	}
}

// TestStateMachine runs js/test/client.test.js: every function test* on
// the classic build, with a fake clock and fake sockets. A test that
// returns a promise passes when it resolves.
func TestStateMachine(t *testing.T) {
	v, _ := Version(Source)
	lib, err := Dist.ReadFile(path.Join("js/dist", v, "edgenode.js"))
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("js/test/client.test.js")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`(?m)^function (test[A-Za-z0-9]+)\(`).FindAllSubmatch(tests, -1)
	if len(names) == 0 {
		t.Fatal("no tests in js/test/client.test.js")
	}
	for _, m := range names {
		name := string(m[1])
		t.Run(strings.TrimPrefix(name, "test"), func(t *testing.T) {
			vm := goja.New()
			if _, err := vm.RunScript("edgenode.js", string(lib)); err != nil {
				t.Fatalf("load the library: %v", err)
			}
			if _, err := vm.RunScript("client.test.js", string(tests)); err != nil {
				t.Fatalf("load the tests: %v", err)
			}
			// The call returns once the promise jobs it queued have run
			// (the fake clock drives everything else).
			res, err := vm.RunString(name + "()")
			if err != nil {
				t.Fatal(err)
			}
			if p, ok := res.Export().(*goja.Promise); ok {
				switch p.State() {
				case goja.PromiseStateRejected:
					t.Fatal(p.Result().String())
				case goja.PromiseStatePending:
					t.Fatal("the test's promise never settled")
				}
			}
		})
	}
}
