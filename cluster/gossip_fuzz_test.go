package cluster

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/tollgate/tollgate/limiter"
	"github.com/tollgate/tollgate/policy"
)

// sink counts what a Node hands up.
type sink struct {
	spent    policy.Money
	backoffs int
}

func (s *sink) Spend(_ string, d []limiter.SpendDelta) {
	for _, x := range d {
		s.spent += x.Spent
	}
}
func (s *sink) Backoff(_, _ string, pause time.Duration, remaining int64) {
	if pause < 0 || remaining < -1 {
		panic("a negative pause or remaining handed up")
	}
	s.backoffs++
}
func (s *sink) MembersChanged() {}

// FuzzReceive: any bytes a peer sends are taken or dropped, never a panic;
// a spend message said again changes nothing, and a later total adds only
// its growth.
func FuzzReceive(f *testing.F) {
	for _, m := range []message{
		{Kind: kindDemand, From: "b", Demand: map[string]float64{"gpt": 3.5}, Cap: -1},
		{Kind: kindSpend, From: "b", Owner: "acme", Period: "2026-01", Gen: 7, Total: 1500, Cap: -1},
		{Kind: kindBackoff, From: "b", Pool: "gpt", Until: time.Now().Add(time.Minute).UnixMilli(), Cap: -1, At: 1},
		{Kind: kindBackoff, From: "b", Pool: "gpt", Cap: 40, At: 2},
	} {
		b, _ := json.Marshal(m)
		f.Add(b)
	}
	f.Add([]byte(`{"k":"spend","f":"b","t":-9007199254740993}`))
	f.Add([]byte(`{"k":"backoff","f":"b","u":-1,"c":-7,"a":3}`))
	f.Add([]byte(`not json`))
	f.Add([]byte(`{"k":"spend","f":"b","o":"acme","p":"2026-01","g":1,"n":18446744073709551615,"t":5}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := &sink{}
		n := &Node{cfg: NodeConfig{Name: "a"}, sig: s, mine: func() map[string]float64 { return nil },
			demand: map[string]peerDemand{}, gossip: newGossip()}
		n.receive(b)
		first := s.spent
		n.receive(b)
		if s.spent != first {
			t.Fatalf("the same message twice counted twice: %d then %d", first, s.spent)
		}
		var m message
		if json.Unmarshal(b, &m) == nil && m.Kind == kindSpend && m.From != "a" && m.From != "" && m.Seq < ^uint64(0) {
			m.Total += 10
			m.Seq++ // a later total
			again, _ := json.Marshal(m)
			n.receive(again)
			if s.spent != first+10 {
				t.Fatalf("a total 10 higher added %d", s.spent-first)
			}
		}
		if s.backoffs > 1 {
			t.Fatalf("one signal applied %d times", s.backoffs)
		}
	})
}
