package node

import (
	"slices"
	"testing"

	"github.com/edgenode/edgenode/internal/config"
)

// TestReplOptionsRequirePeer checks when a new or wiped node waits for a
// peer instead of starting a cluster alone: seeds other than its own
// address, and neither mongo.bootstrap nor a mesh off.
func TestReplOptionsRequirePeer(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mesh      bool
		seeds     []string
		bootstrap bool
		want      []string // Seeds; RequirePeer is len > 0
	}{
		{"no mesh", false, []string{"127.0.0.2:7946"}, false, nil},
		{"no seeds", true, nil, false, nil},
		{"only itself", true, []string{"127.0.0.1:7946"}, false, nil},
		{"peers", true, []string{"127.0.0.1:7946", "127.0.0.2:7946", "127.0.0.3:7946"}, false, []string{"127.0.0.2:7946", "127.0.0.3:7946"}},
		{"advertised itself", true, []string{"203.0.113.1:7946", "127.0.0.2:7946"}, false, []string{"127.0.0.2:7946"}},
		{"bootstrap", true, []string{"127.0.0.2:7946"}, true, nil},
	} {
		cfg := config.Default()
		cfg.Mesh.Enabled, cfg.Mesh.Seeds, cfg.Mongo.Bootstrap = tc.mesh, tc.seeds, tc.bootstrap
		cfg.Mesh.Bind, cfg.Mesh.Advertise = "127.0.0.1:7946", "203.0.113.1:7946"
		o := replOptions(&cfg)
		if !slices.Equal(o.Seeds, tc.want) || o.RequirePeer != (len(tc.want) > 0) {
			t.Errorf("%s: RequirePeer %v, Seeds %v; want %v", tc.name, o.RequirePeer, o.Seeds, tc.want)
		}
	}
}
