package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// show writes m as JSON with -o json, or else calls table.
func (o *options) show(m proto.Message, table func(w io.Writer)) error {
	switch o.output {
	case "json":
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(o.stdout, string(b))
		return err
	case "table", "":
		tw := tabwriter.NewWriter(o.stdout, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return usageError{fmt.Errorf("--output %q: want table or json", o.output)}
}

// repeat runs once, or with --watch every interval until ctx ends,
// clearing the terminal before each refresh so the table redraws in place.
func (o *options) repeat(ctx context.Context, once func() error) error {
	if o.watch <= 0 {
		return once()
	}
	t := time.NewTicker(o.watch)
	defer t.Stop()
	for {
		fmt.Fprint(o.stdout, "\033[H\033[2J")
		if err := once(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// ago writes a duration for a table: 3.2s, 4m10s, 2h3m.
func ago(d time.Duration) string {
	switch {
	case d < 0:
		return "-"
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}
