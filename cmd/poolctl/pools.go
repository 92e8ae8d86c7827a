package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

func hostsCmd(ctx context.Context, o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "hosts",
		Short: "List the host pools: connections, waiters and counters",
		Args:  args(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error {
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.conn.Close()
			return o.repeat(ctx, func() error {
				cctx, cancel := c.call(ctx, o.timeout)
				defer cancel()
				resp, err := c.pools.ListHosts(cctx, &pooldv1.ListHostsRequest{})
				if err != nil {
					return err
				}
				return o.show(resp, func(w io.Writer) {
					fmt.Fprintln(w, "KEY\tACTIVE\tIDLE\tDIALING\tPENDING\tH2\tSTREAMS\tREQUESTS\tREUSE\tERRORS")
					for _, h := range resp.GetHosts() {
						n := h.GetCounters()
						reuse := "-"
						if n.GetRequests() > 0 {
							reuse = fmt.Sprintf("%.0f%%", 100*float64(n.GetReused())/float64(n.GetRequests()))
						}
						fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%d\n", h.GetKey(), h.GetActive(), h.GetIdle(),
							h.GetDialing(), h.GetPending(), h.GetH2Conns(), h.GetStreams(), n.GetRequests(), reuse, n.GetErrors())
					}
				})
			})
		},
	}
	cmd.Flags().DurationVar(&o.watch, "watch", 0, "refresh the table at this interval until interrupted (for example 2s)")
	return cmd
}

func connsCmd(ctx context.Context, o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "conns [HOST]",
		Short: "List connections, of one host or all",
		Args:  args(cobra.MaximumNArgs(1)),
		RunE: func(_ *cobra.Command, args []string) error {
			host := ""
			if len(args) == 1 {
				host = args[0]
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.conn.Close()
			return o.repeat(ctx, func() error {
				all := &pooldv1.ListConnectionsResponse{}
				for token := ""; ; {
					cctx, cancel := c.call(ctx, o.timeout)
					resp, err := c.pools.ListConnections(cctx, &pooldv1.ListConnectionsRequest{Host: host, PageSize: 1000, PageToken: token})
					cancel()
					if err != nil {
						return err
					}
					all.Connections = append(all.Connections, resp.GetConnections()...)
					if token = resp.GetNextPageToken(); token == "" {
						break
					}
				}
				now := time.Now()
				return o.show(all, func(w io.Writer) {
					fmt.Fprintln(w, "ID\tHOST\tSTATE\tPROTO\tREMOTE\tAGE\tIDLE FOR\tREQUESTS\tSTREAMS\tREAD\tWRITTEN")
					for _, cn := range all.GetConnections() {
						state := strings.ToLower(strings.TrimPrefix(cn.GetState().String(), "CONNECTION_STATE_"))
						if cn.GetGoaway() {
							state += " (goaway " + cn.GetGoawayErrorCode() + ")"
						}
						proto := cn.GetProtocol()
						if proto == "" {
							proto = "-"
						}
						idle := "-"
						if cn.GetState() == pooldv1.ConnectionState_CONNECTION_STATE_IDLE && cn.GetLastUsedTime() != nil {
							idle = ago(now.Sub(cn.GetLastUsedTime().AsTime()))
						}
						fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%d\n", cn.GetId(), cn.GetHost(), state, proto, cn.GetRemoteAddress(),
							ago(now.Sub(cn.GetCreatedTime().AsTime())), idle, cn.GetRequests(), streams(cn), cn.GetBytesRead(), cn.GetBytesWritten())
					}
				})
			})
		},
	}
	cmd.Flags().DurationVar(&o.watch, "watch", 0, "refresh the table at this interval until interrupted (for example 2s)")
	return cmd
}

func drainCmd(ctx context.Context, o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "drain HOST",
		Short: "Close a host's idle connections and retire its active ones after their response",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(_ *cobra.Command, args []string) error {
			return o.unary(ctx, func(c *client, cctx context.Context) error {
				resp, err := c.pools.DrainConnections(cctx, &pooldv1.DrainConnectionsRequest{Host: args[0]})
				if err != nil {
					return err
				}
				return o.show(resp, func(w io.Writer) {
					fmt.Fprintf(w, "closed %d idle, %d draining\n", resp.GetClosedIdle(), resp.GetDraining())
				})
			})
		},
	}
}

func eventsCmd(ctx context.Context, o *options) *cobra.Command {
	var host string
	var kinds []string
	var count int
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow pool events as they happen",
		Args:  args(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error {
			req := &pooldv1.WatchEventsRequest{Host: host}
			for _, k := range kinds {
				v, ok := pooldv1.EventKind_value["EVENT_KIND_"+strings.ToUpper(k)]
				if !ok || v == 0 {
					return usageError{fmt.Errorf("--kind %q: not an event kind (%s)", k, strings.Join(eventKinds(), ", "))}
				}
				req.Kinds = append(req.Kinds, pooldv1.EventKind(v))
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.conn.Close()
			cctx, cancel := c.call(ctx, 0)
			defer cancel()
			stream, err := c.pools.WatchEvents(cctx, req)
			if err != nil {
				return err
			}
			for seen := 0; count == 0 || seen < count; seen++ {
				ev, err := stream.Recv()
				if err != nil {
					if ctx.Err() != nil {
						return nil // interrupted: a normal end
					}
					return err
				}
				if err := o.show(ev, func(w io.Writer) {
					kind := strings.ToLower(strings.TrimPrefix(ev.GetKind().String(), "EVENT_KIND_"))
					fmt.Fprintf(w, "%s\t%s\t%s\tconn %d\t%s\t%s\n", ev.GetTime().AsTime().Format(time.RFC3339Nano), kind,
						ev.GetHost(), ev.GetConnectionId(), ev.GetReason(), ev.GetDetail())
				}); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "only this host's events")
	cmd.Flags().StringSliceVar(&kinds, "kind", nil, "only events of these kinds (repeatable or comma-separated)")
	cmd.Flags().IntVar(&count, "count", 0, "stop after this many events (0 = follow until interrupted)")
	return cmd
}

// streams is a conn's STREAMS cell: for HTTP/2 the streams in flight
// against the limit in force ("?" before the upstream's SETTINGS), and
// "+N" requests waiting for one; "-" for HTTP/1.1, which has one request
// at a time.
func streams(cn *pooldv1.Connection) string {
	if !strings.HasPrefix(cn.GetProtocol(), "HTTP/2") {
		return "-"
	}
	limit := "?"
	if cn.GetMaxStreams() > 0 {
		limit = strconv.FormatUint(uint64(cn.GetMaxStreams()), 10)
	}
	out := fmt.Sprintf("%d/%s", cn.GetActiveStreams(), limit)
	if n := cn.GetPendingStreams(); n > 0 {
		out += fmt.Sprintf("+%d", n)
	}
	return out
}

// eventKinds names the kinds --kind takes, in the API's order.
func eventKinds() []string {
	values := pooldv1.EventKind(0).Descriptor().Values()
	var out []string
	for i := range values.Len() {
		if n := values.Get(i).Number(); n != 0 {
			out = append(out, strings.ToLower(strings.TrimPrefix(string(values.Get(i).Name()), "EVENT_KIND_")))
		}
	}
	return out
}
