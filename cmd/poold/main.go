// Command poold is the connection-pool daemon: it runs callers' HTTP requests
// on pooled upstream connections and exposes the pools over gRPC.
//
// Run `poold --help` for its flags; every flag can also be set through the
// environment (--listen ↔ POOLD_LISTEN).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err))
}

// exitCode is 0 on success, 2 for a bad command line (as flag does), 1 for
// anything else.
func exitCode(err error) int {
	var uerr *usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return 0
	case errors.As(err, &uerr):
		return 2
	default:
		fmt.Fprintf(os.Stderr, "poold: %v\n", err)
		return 1
	}
}
