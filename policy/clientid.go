package policy

import (
	"fmt"
	"strings"
)

// MaxClientIDLen is the longest client id Tollgate accepts.
const MaxClientIDLen = 128

// ValidClientID reports whether id may name a client: 1 to 128 of
// A-Z a-z 0-9 . _ : - and /, the last for sub-clients (acme/marketing).
// A call naming anything else, whoever set it, is refused (invalid_client):
// an id is a budget key, a log field and a URL segment. The policy's own
// clients are held to it too, or they could never be matched.
func ValidClientID(id string) error {
	if id == "" {
		return fmt.Errorf("id is empty")
	}
	if len(id) > MaxClientIDLen {
		return fmt.Errorf("id is %d bytes long, over the %d allowed", len(id), MaxClientIDLen)
	}
	if i := strings.IndexFunc(id, func(c rune) bool { return !clientIDChar(c) }); i >= 0 {
		return fmt.Errorf("id %q holds %q at byte %d: only A-Z a-z 0-9 . _ : - / are allowed", id, id[i:i+1], i)
	}
	return nil
}

func clientIDChar(c rune) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune("._:-/", c)
}
