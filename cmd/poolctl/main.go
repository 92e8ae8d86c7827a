// Command poolctl is poold's operator CLI: it shows the pools and their
// connections, follows events, and reads and changes policies, over the
// daemon's gRPC API with its generated client.
//
// Exit status: 0 success, 1 the call failed, 2 bad usage, 3 not found,
// 4 conflict (the policy changed since its etag was read), 5 poold could
// not be reached or refused the credentials.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// Exit statuses.
const (
	exitOK       = 0
	exitFailed   = 1
	exitUsage    = 2
	exitNotFound = 3
	exitConflict = 4
	exitAccess   = 5
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// options are the flags every command shares.
type options struct {
	addr       string
	tokenFile  string
	tls        bool
	caFile     string
	certFile   string
	keyFile    string
	serverName string
	output     string
	timeout    time.Duration
	watch      time.Duration

	stdout, stderr io.Writer
}

// usageError is a mistake in the command line.
type usageError struct{ error }

// args makes a positional-argument check's complaint a usageError.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, a []string) error {
		if err := check(c, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// run is poolctl with its command line, environment and output given, so
// that tests run it in process. It returns the exit status.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	o := &options{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "poolctl",
		Short:         "Operate a poold: its pools, connections, events and policies",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Reached with no command or an unknown one.
		Args: cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				_ = c.Help()
				return usageError{errors.New("a command is required")}
			}
			return usageError{fmt.Errorf("unknown command %q (see poolctl --help)", args[0])}
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	f := root.PersistentFlags()
	f.StringVar(&o.addr, "addr", env("POOLCTL_ADDR", "127.0.0.1:7070"), "poold's gRPC address (POOLCTL_ADDR)")
	f.StringVar(&o.tokenFile, "token-file", env("POOLCTL_TOKEN_FILE", ""), "file whose first token is sent as the admin bearer token; NAME:TOKEN lines are read as TOKEN (POOLCTL_TOKEN_FILE)")
	f.BoolVar(&o.tls, "tls", env("POOLCTL_TLS", "") == "true", "connect over TLS (POOLCTL_TLS=true)")
	f.StringVar(&o.caFile, "ca-file", env("POOLCTL_CA_FILE", ""), "CA to verify poold's certificate with, instead of the system's (POOLCTL_CA_FILE); implies --tls")
	f.StringVar(&o.certFile, "cert", env("POOLCTL_CERT", ""), "client certificate for mTLS (POOLCTL_CERT); implies --tls")
	f.StringVar(&o.keyFile, "key", env("POOLCTL_KEY", ""), "client certificate's key (POOLCTL_KEY)")
	f.StringVar(&o.serverName, "server-name", env("POOLCTL_SERVER_NAME", ""), "name poold's certificate must match, when not the address's host (POOLCTL_SERVER_NAME)")
	f.StringVarP(&o.output, "output", "o", env("POOLCTL_OUTPUT", "table"), "table or json (POOLCTL_OUTPUT)")
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "bound on each call")
	root.AddCommand(hostsCmd(ctx, o), connsCmd(ctx, o), eventsCmd(ctx, o), policyCmd(ctx, o), effectiveCmd(ctx, o), drainCmd(ctx, o))

	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "poolctl:", message(err))
	return exitStatus(err)
}

// exitStatus maps an error to the status scripts test.
func exitStatus(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	st, ok := status.FromError(err)
	if !ok {
		return exitFailed
	}
	switch st.Code() {
	case codes.NotFound:
		return exitNotFound
	case codes.Aborted:
		return exitConflict
	case codes.Unavailable, codes.Unauthenticated, codes.PermissionDenied:
		return exitAccess
	case codes.InvalidArgument:
		return exitUsage
	}
	return exitFailed
}

// message is what poolctl says of err: a status's message with its code.
func message(err error) string {
	if st, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", strings.ToLower(st.Code().String()), st.Message())
	}
	return err.Error()
}

// client is a connection to poold with the admin token attached.
type client struct {
	conn   *grpc.ClientConn
	token  string
	pools  pooldv1.PoolServiceClient
	policy pooldv1.PolicyServiceClient
}

func (o *options) dial() (*client, error) {
	creds := insecure.NewCredentials()
	if o.tls || o.caFile != "" || o.certFile != "" {
		cfg := &tls.Config{ServerName: o.serverName, MinVersion: tls.VersionTLS12}
		if o.caFile != "" {
			pem, err := os.ReadFile(o.caFile)
			if err != nil {
				return nil, usageError{fmt.Errorf("--ca-file: %w", err)}
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, usageError{fmt.Errorf("--ca-file %s: no certificate in it", o.caFile)}
			}
		}
		if o.certFile != "" {
			pair, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
			if err != nil {
				return nil, usageError{fmt.Errorf("--cert/--key: %w", err)}
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		creds = credentials.NewTLS(cfg)
	}
	token := ""
	if o.tokenFile != "" {
		raw, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("--token-file: %w", err)}
		}
		for _, line := range strings.Split(string(raw), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if _, t, named := strings.Cut(line, ":"); named {
				line = t
			}
			token = line
			break
		}
	}
	conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, usageError{fmt.Errorf("--addr %s: %w", o.addr, err)}
	}
	return &client{conn: conn, token: token, pools: pooldv1.NewPoolServiceClient(conn), policy: pooldv1.NewPolicyServiceClient(conn)}, nil
}

// unary dials poold and runs f with the client and a context for one
// call, then hangs up.
func (o *options) unary(ctx context.Context, f func(c *client, ctx context.Context) error) error {
	c, err := o.dial()
	if err != nil {
		return err
	}
	defer c.conn.Close()
	cctx, cancel := c.call(ctx, o.timeout)
	defer cancel()
	return f(c, cctx)
}

// call returns a context for one call: bounded, with the token.
func (c *client) call(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if c.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
	}
	if timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, timeout)
}
