// Package sdk holds edgenode.js, the browser client of the node's live
// channels (sdk/js), as the node serves it: every released version's files,
// built from sdk/js/src by `go generate ./sdk` into sdk/js/dist/{version}/.
//
// The built files are committed, not made at build time: a version, once
// released, is served unchanged for as long as nodes run (pages pin it with
// an integrity hash), so its bytes must not depend on the build, and
// `go build` alone makes a complete binary. TestDistIsBuilt fails when the
// source changed without a new version.
package sdk

//go:generate go run ./js/build

import (
	"bytes"
	"embed"
	"fmt"
	"regexp"
)

// Dist is sdk/js/dist: {version}/edgenode.mjs (the ES module) and
// {version}/edgenode.js (the classic script) of every released version.
//
//go:embed js/dist
var Dist embed.FS

// Source is the ES module being developed (sdk/js/src/edgenode.mjs).
//
//go:embed js/src/edgenode.mjs
var Source []byte

var (
	exportRe  = regexp.MustCompile(`(?m)^export (function|class|const) ([A-Za-z_$][A-Za-z0-9_$]*)`)
	versionRe = regexp.MustCompile(`(?m)^export const version = "([0-9]+\.[0-9]+\.[0-9]+)";$`)
	leftRe    = regexp.MustCompile(`(?m)^\s*(export|import)\b`)
)

// Version is the version the module declares (export const version).
func Version(module []byte) (string, error) {
	m := versionRe.FindSubmatch(module)
	if m == nil {
		return "", fmt.Errorf("sdk: the module has no line `export const version = \"X.Y.Z\";`")
	}
	return string(m[1]), nil
}

// Classic turns the ES module into a classic script that sets
// globalThis.edgenode to an object of the module's exports. The module
// keeps to top-level `export function|class|const` declarations so that
// this needs no JavaScript parser.
func Classic(module []byte) ([]byte, error) {
	v, err := Version(module)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, m := range exportRe.FindAllSubmatch(module, -1) {
		names = append(names, string(m[2]))
	}
	body := exportRe.ReplaceAll(module, []byte("$1 $2"))
	if loc := leftRe.FindIndex(body); loc != nil {
		line := 1 + bytes.Count(body[:loc[0]], []byte("\n"))
		return nil, fmt.Errorf("sdk: line %d: only top-level `export function|class|const` can be wrapped as a classic script", line)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "/* edgenode.js %s, classic script: sets window.edgenode. Built from sdk/js/src/edgenode.mjs. */\n", v)
	b.WriteString("(function (global) {\n\"use strict\";\n")
	b.Write(body)
	b.WriteString("global.edgenode = {")
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %s", n, n)
	}
	b.WriteString("};\n})(typeof globalThis !== \"undefined\" ? globalThis : this);\n")
	return b.Bytes(), nil
}
