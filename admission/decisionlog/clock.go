package decisionlog

import "time"

// nowUTC is the time of a start line; the records carry admission's clock.
func nowUTC() time.Time { return time.Now().UTC() }
