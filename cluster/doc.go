// Package cluster makes many sidecars sharing one Redis act as one: Node is
// a member's memberlist membership and its gossip of demand, spend and
// upstream back-off; Store wraps the shared store and decides most calls
// locally, from slices of pools (leases), of clients' concurrency slots,
// and of budget chains, booking what it decided exactly once, and decides
// on its 1/N share while the shared store cannot be reached (outage mode);
// Fleet is the two wired together. It imports limiter and policy; limiter
// never imports it.
package cluster
