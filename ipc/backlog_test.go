//go:build linux

package ipc

import "testing"

// The backlog walk: a loop is behind while one return in eight finds
// its request waiting, caught up once none does, and bounded, so that a
// long backlog is forgotten within backlogMax waits; the server is
// behind while two loops are, and a loop that ends leaves the count.
func TestBacklog(t *testing.T) {
	var b backlog
	var one, two connBacklog
	one.waited(&b)
	if one.n != 0 || b.conns.Load() != 0 {
		t.Fatalf("a wait below zero: walk %d, count %d", one.n, b.conns.Load())
	}
	for range 100 {
		one.found(&b)
		for range 7 {
			one.waited(&b)
			if one.n == 0 {
				t.Fatal("caught up while one request in eight is found waiting")
			}
		}
	}
	one.found(&b)
	if one.n != backlogMax || b.conns.Load() != 1 {
		t.Fatalf("walk %d, count %d after a long backlog; want %d, 1", one.n, b.conns.Load(), backlogMax)
	}
	if b.behind() {
		t.Fatal("the server is behind with one loop behind")
	}
	two.found(&b)
	if !b.behind() {
		t.Fatal("the server is not behind with two loops behind")
	}
	for range backlogMax - 1 {
		one.waited(&b)
	}
	if one.n != 1 || !b.behind() {
		t.Fatalf("walk %d: caught up before backlogMax waits", one.n)
	}
	one.waited(&b)
	if b.behind() || b.conns.Load() != 1 {
		t.Fatalf("count %d after a loop caught up, want 1", b.conns.Load())
	}
	two.end(&b)
	two.end(&b)
	if b.conns.Load() != 0 {
		t.Fatalf("count %d after the last behind loop ended, want 0", b.conns.Load())
	}
}
