//go:build race

package repl

// The race detector slows the embedded database down a lot: tests use less data.
const raceEnabled = true
