package costing

// CountPaths exposes both counting paths to the external tests, which check
// that they agree with each other and with the reference tokenizer.
func CountPaths(t *Tokenizer, encoding, text string) (fast, safe int64, err error) {
	e, err := t.encoder(encoding)
	if err != nil {
		return 0, 0, err
	}
	return int64(len(e.fast.EncodeOrdinary(text))), int64(e.safe.count(text)), nil
}

// LongestRun exposes the router between the two paths.
var LongestRun = longestRun

// MaxFastRun is the router's threshold.
const MaxFastRun = maxFastRun
