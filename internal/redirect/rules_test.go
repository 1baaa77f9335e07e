package redirect_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tollgate/tollgate/internal/redirect"
)

func TestRulesText(t *testing.T) {
	cfg := redirect.DefaultConfig()
	cfg.ExtraUIDs = []int{65532}
	v4, err := cfg.IPTables()
	require.NoError(t, err)
	for _, want := range []string{
		"*nat\n", ":TOLLGATE_OUTPUT - [0:0]\n", "-A OUTPUT -p tcp -j TOLLGATE_OUTPUT\n",
		"-A TOLLGATE_OUTPUT -m owner --uid-owner 101 -j RETURN\n", "-A TOLLGATE_OUTPUT -m owner --uid-owner 65532 -j RETURN\n",
		"-A TOLLGATE_OUTPUT -p tcp --dport 443 -j REDIRECT --to-ports 15001\n", "COMMIT\n",
	} {
		assert.Contains(t, v4, want)
	}
	v6, err := cfg.IP6Tables()
	require.NoError(t, err)
	assert.Contains(t, v6, "-A TOLLGATE_OUTPUT -p tcp --dport 443 -j REJECT --reject-with tcp-reset\n")
	nft, err := cfg.NFT()
	require.NoError(t, err)
	assert.Contains(t, nft, "meta skuid { 101, 65532 } return")
	assert.Contains(t, nft, "meta nfproto ipv4 tcp dport { 443 } redirect to :15001")
}

func TestConfigValidate(t *testing.T) {
	tests := map[string]struct {
		edit func(*redirect.Config)
		want string
	}{
		"root as Envoy":         {func(c *redirect.Config) { c.EnvoyUID = 0 }, "must be positive"},
		"no port":               {func(c *redirect.Config) { c.Ports = nil }, "no destination port"},
		"listener out of range": {func(c *redirect.Config) { c.ListenPort = 70000 }, "listener port 70000"},
		"loop":                  {func(c *redirect.Config) { c.Ports = []int{15001} }, "listener's own"},
		"negative uid":          {func(c *redirect.Config) { c.ExtraUIDs = []int{-1} }, "negative"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := redirect.DefaultConfig()
			tc.edit(&cfg)
			_, err := cfg.IPTables()
			assert.ErrorContains(t, err, tc.want)
			_, err = cfg.NFT()
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
