package node

import (
	"testing"

	"github.com/edgenode/edgenode/internal/mesh"
	"github.com/edgenode/edgenode/internal/mongoproxy/repl"
)

// Replication's messages ride the mesh's links and are versioned by them:
// the version repl encodes must be the one the mesh negotiates at most.
// Raising mesh.Protocol means deciding what repl sends on the new version
// (often: the same bytes, a new golden folder).
func TestReplWireVersionIsTheMeshProtocol(t *testing.T) {
	if repl.WireVersion != mesh.Protocol || repl.MinWireVersion != mesh.Protocol-1 {
		t.Errorf("repl encodes link versions %d..%d, the mesh speaks %d and %d", repl.MinWireVersion, repl.WireVersion, mesh.Protocol-1, mesh.Protocol)
	}
}
