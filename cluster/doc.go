// Package cluster will hold what makes many sidecars act as one: memberlist
// membership and gossip of demand, spend and upstream back-off, local leases
// of pool tokens, and outage mode when Redis is unreachable. It imports
// limiter and policy; limiter never imports it.
package cluster
