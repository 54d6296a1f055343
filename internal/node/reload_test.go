package node

import (
	"slices"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/config"
)

// RestartKeys names the keys a reload cannot apply, by their config path,
// and none of those it applies.
func TestRestartKeys(t *testing.T) {
	running := config.Default()
	loaded := config.Default()
	loaded.Node.ID = "other"
	loaded.Mesh.Seeds = []string{"127.0.0.2:7946"}
	loaded.PubSub.QueueLen = 7
	loaded.HTTPS.Limits.IdleTimeout = time.Minute
	// Live keys: not named.
	loaded.Log.Level = "warn"
	loaded.DNS.Zones = nil
	loaded.PubSub.Tenants = []config.Tenant{{Name: "acme"}}
	loaded.PubSub.History = 3
	loaded.CDN.MaxBytes = 1
	loaded.HTTPS.AppServer = "http://127.0.0.1:1"
	loaded.HTTPS.Limits.MaxBodyBytes = 1
	loaded.Mesh.GossipKeys = []config.Secret{{Inline: "k"}}
	got := RestartKeys(&running, &loaded)
	want := []string{"node.id", "https.limits.idle_timeout", "mesh.seeds", "pubsub.queue_length"}
	if !slices.Equal(got, want) {
		t.Errorf("RestartKeys = %q, want %q", got, want)
	}
	if got := RestartKeys(&running, &running); len(got) != 0 {
		t.Errorf("no change: %q", got)
	}
}
