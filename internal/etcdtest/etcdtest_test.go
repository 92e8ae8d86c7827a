package etcdtest

import (
	"context"
	"testing"
	"time"
)

func TestAClusterKeepsWritingWithOneMemberDownAndNotWithTwo(t *testing.T) {
	c := Start(t, 3)
	client := c.Client(t)
	// A write forwarded to a leader that just died is lost and waits for
	// etcd's own timeout; tries of a second each reach the next leader.
	put := func(timeout time.Duration) error {
		deadline := time.Now().Add(timeout)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := client.Put(ctx, "k", "v")
			cancel()
			if err == nil || time.Now().After(deadline) {
				return err
			}
		}
	}
	if err := put(5 * time.Second); err != nil {
		t.Fatalf("a healthy cluster refused a write: %v", err)
	}
	c.Kill(0)
	if err := put(5 * time.Second); err != nil {
		t.Fatalf("two of three members refused a write: %v", err)
	}
	c.Kill(1)
	if err := put(2 * time.Second); err == nil {
		t.Fatal("one member of three took a write")
	}
	c.Restart(0)
	c.WaitHealthy(0)
	if err := put(5 * time.Second); err != nil {
		t.Fatalf("a restored quorum refused a write: %v", err)
	}
}
