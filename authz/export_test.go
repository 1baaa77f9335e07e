package authz

// QueueBusy is how many of the queue's lines are letting waiters go now.
func (d *Decider) QueueBusy() int { return d.queue.Dispatching() }
