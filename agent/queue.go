package agent

import (
	"sync"
	"time"
)

// workQueue hands out keys (domain UUIDs) to workers so that no key is ever
// processed by two workers at once, and a key added while it is being
// processed is processed again afterwards. That is what makes the reconcile
// level-triggered: however many events arrive for a domain, it is re-read
// and reconciled at least once after the last of them.
type workQueue struct {
	mu         sync.Mutex
	cond       *sync.Cond
	order      []string
	dirty      map[string]bool
	processing map[string]bool
	failures   map[string]int
	closed     bool

	minBackoff, maxBackoff time.Duration
}

func newWorkQueue(minBackoff, maxBackoff time.Duration) *workQueue {
	q := &workQueue{
		dirty:      make(map[string]bool),
		processing: make(map[string]bool),
		failures:   make(map[string]int),
		minBackoff: minBackoff,
		maxBackoff: maxBackoff,
	}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// add queues key unless it is already waiting.
func (q *workQueue) add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.dirty[key] {
		return
	}
	q.dirty[key] = true
	if !q.processing[key] {
		q.order = append(q.order, key)
		q.cond.Signal()
	}
}

// retry queues key again after a delay that doubles with each consecutive
// failure of that key, so a persistently failing domain cannot starve the
// others or hammer libvirt.
func (q *workQueue) retry(key string) time.Duration {
	q.mu.Lock()
	n := q.failures[key]
	q.failures[key] = n + 1
	q.mu.Unlock()
	d := q.minBackoff << min(n, 20)
	if d <= 0 || d > q.maxBackoff {
		d = q.maxBackoff
	}
	time.AfterFunc(d, func() { q.add(key) })
	return d
}

// forget resets the key's failure count after a success.
func (q *workQueue) forget(key string) {
	q.mu.Lock()
	delete(q.failures, key)
	q.mu.Unlock()
}

// get blocks until a key is available or the queue is closed.
func (q *workQueue) get() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.order) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return "", false
	}
	key := q.order[0]
	q.order[0] = ""
	q.order = q.order[1:]
	q.processing[key] = true
	delete(q.dirty, key)
	return key, true
}

// done releases key; if it was added again meanwhile it goes back in line.
func (q *workQueue) done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.processing, key)
	if q.dirty[key] && !q.closed {
		q.order = append(q.order, key)
		q.cond.Signal()
	}
}

func (q *workQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// idle reports whether nothing is waiting or being processed.
func (q *workQueue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.order) == 0 && len(q.processing) == 0
}
