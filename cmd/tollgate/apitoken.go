package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/tollgate/tollgate/authz"
)

// apiTokenEnv holds the API's bearer token. It is read here and nowhere
// else, and deliberately is no flag: a flag's value shows in ps and in
// the process's command line.
const apiTokenEnv = "TOLLGATE_API_TOKEN"

// apiTokenFlag registers --api-token-file on fl.
func apiTokenFlag(fl *pflag.FlagSet, file *string, what string) {
	fl.StringVar(file, "api-token-file", "", "file holding the API bearer token "+what+" (or set "+apiTokenEnv+")")
}

// apiToken returns the API token from file or, without one, from the
// environment; "" when neither is set. Surrounding white space (a final
// newline) is not part of it.
func apiToken(file string, getenv func(string) string) (authz.Secret, error) {
	env := strings.TrimSpace(getenv(apiTokenEnv))
	if file == "" {
		return authz.Secret(env), nil
	}
	if env != "" {
		return "", fmt.Errorf("API token: both --api-token-file and %s are set; keep one", apiTokenEnv)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("API token: %s is empty", file)
	}
	return authz.Secret(tok), nil
}

// withToken sets req's bearer token, if there is one.
func withToken(req *http.Request, tok authz.Secret) {
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+string(tok))
	}
}

// errNoToken explains a 401 or 403 from the API to the person at the CLI.
var errNoToken = errors.New("the API wants its bearer token: pass --api-token-file FILE or set " + apiTokenEnv)
