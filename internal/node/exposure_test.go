package node

import (
	"strings"
	"testing"

	"github.com/edgenode/edgenode/internal/config"
)

func TestExposureWarnings(t *testing.T) {
	cases := []struct {
		admin, mongo, upstream string
		mongoOn                bool
		want                   []string
	}{
		{"127.0.0.1:9090", "127.0.0.1:27018", "", true, nil},
		{"[::1]:9090", "localhost:27018", "", true, nil},
		{"0.0.0.0:9090", "127.0.0.1:27018", "", true, []string{"admin.listen"}},
		{":9090", "127.0.0.1:27018", "", true, []string{"admin.listen"}},
		{"127.0.0.1:9090", "10.0.0.5:27018", "", true, []string{"mongo.listen"}},
		{"127.0.0.1:9090", "[::]:27018", "mongodb://127.0.0.1:27017/", true, []string{"mongo.listen"}},
		{"127.0.0.1:9090", "0.0.0.0:27018", "mongodb://app:pw@127.0.0.1:27017/?authSource=admin", true, nil},
		{"127.0.0.1:9090", "0.0.0.0:27018", "", false, nil},
		{"192.0.2.1:9090", "0.0.0.0:27018", "", true, []string{"admin.listen", "mongo.listen"}},
	}
	for _, tc := range cases {
		var c config.Config
		c.Admin.Listen, c.Mongo.Listen, c.Mongo.Enabled = tc.admin, tc.mongo, tc.mongoOn
		c.Mongo.Upstream = config.Secret{Inline: tc.upstream}
		var got []string
		for _, e := range exposureWarnings(&c) {
			got = append(got, e.key)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("admin %s mongo %s (on %v) upstream %q: warnings %v, want %v", tc.admin, tc.mongo, tc.mongoOn, tc.upstream, got, tc.want)
		}
	}
}
