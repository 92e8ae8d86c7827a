package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// policyName accepts "default", "api.example.com" or "policies/...".
func policyName(s string) string {
	if strings.HasPrefix(s, "policies/") {
		return s
	}
	return "policies/" + s
}

func policyCmd(ctx context.Context, o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Read and change policies"}
	show := func(p *pooldv1.Policy) error {
		return o.show(p, func(w io.Writer) { writePolicy(w, p) })
	}
	get := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a policy (NAME: default, a host, or policies/...)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(_ *cobra.Command, args []string) error {
			return o.unary(ctx, func(c *client, cctx context.Context) error {
				p, err := c.policy.GetPolicy(cctx, &pooldv1.GetPolicyRequest{Name: policyName(args[0])})
				if err != nil {
					return err
				}
				return show(p)
			})
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List every policy",
		Args:  args(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error {
			return o.unary(ctx, func(c *client, cctx context.Context) error {
				resp, err := c.policy.ListPolicies(cctx, &pooldv1.ListPoliciesRequest{})
				if err != nil {
					return err
				}
				return o.show(resp, func(w io.Writer) {
					fmt.Fprintln(w, "NAME\tETAG\tSETS")
					for _, p := range resp.GetPolicies() {
						fmt.Fprintf(w, "%s\t%s\t%s\n", p.GetName(), p.GetEtag(), strings.Join(setFields(p), ","))
					}
				})
			})
		},
	}
	var etag string
	set := &cobra.Command{
		Use:   "set NAME FIELD=VALUE...",
		Short: "Change the named fields of a policy (creating a host policy), guarded by its etag",
		Long: "Change the named fields of a policy, for example\n" +
			"  poolctl policy set api.example.com idle_conn_timeout=30s max_conns_per_host=8 tcp_keepalive.idle=15s\n" +
			"Only the fields named change (an update mask); FIELD= clears one, so it inherits again. The etag\n" +
			"read just before (or --etag) guards the change: if someone changed the policy in between, nothing\n" +
			"changes and poolctl exits 4.",
		Args: args(cobra.MinimumNArgs(2)),
		RunE: func(_ *cobra.Command, args []string) error {
			name := policyName(args[0])
			p, paths, err := parseAssignments(name, args[1:])
			if err != nil {
				return err
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.conn.Close()
			if etag == "" {
				cctx, cancel := c.call(ctx, o.timeout)
				cur, err := c.policy.GetPolicy(cctx, &pooldv1.GetPolicyRequest{Name: name})
				cancel()
				switch {
				case err == nil:
					etag = cur.GetEtag()
				case status.Code(err) != codes.NotFound:
					return err
				}
			}
			p.Etag = etag
			cctx, cancel := c.call(ctx, o.timeout)
			defer cancel()
			out, err := c.policy.UpdatePolicy(cctx, &pooldv1.UpdatePolicyRequest{
				Policy: p, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}, AllowMissing: true,
			})
			if status.Code(err) == codes.Aborted {
				return status.Errorf(codes.Aborted, "%s changed since it was read (etag %s); nothing was changed: read it again and retry", name, etag)
			}
			if err != nil {
				return err
			}
			return show(out)
		},
	}
	set.Flags().StringVar(&etag, "etag", "", "the etag the change must match (default: the one read just before)")
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a host policy",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(_ *cobra.Command, args []string) error {
			return o.unary(ctx, func(c *client, cctx context.Context) error {
				if _, err := c.policy.DeletePolicy(cctx, &pooldv1.DeletePolicyRequest{Name: policyName(args[0])}); err != nil {
					return err
				}
				fmt.Fprintln(o.stdout, "deleted", policyName(args[0]))
				return nil
			})
		},
	}
	cmd.AddCommand(get, list, set, del)
	return cmd
}

func effectiveCmd(ctx context.Context, o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "effective HOST",
		Short: "Show the policy in force for a host (host or host:port)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(_ *cobra.Command, args []string) error {
			return o.unary(ctx, func(c *client, cctx context.Context) error {
				p, err := c.policy.GetEffectivePolicy(cctx, &pooldv1.GetEffectivePolicyRequest{Host: args[0]})
				if err != nil {
					return err
				}
				return o.show(p, func(w io.Writer) { writePolicy(w, p) })
			})
		},
	}
}

// parseAssignments turns FIELD=VALUE arguments into a Policy and its mask.
// Values are written as in JSON or as bare words: 30s, 8, true,
// http://proxy:3128, and an enum by its short name (protocols=h2) or its
// full one (PROTOCOLS_H2). protojson checks the names and the types, so a
// typo is refused with the field it names.
func parseAssignments(name string, args []string) (*pooldv1.Policy, []string, error) {
	doc := map[string]any{"name": name}
	var paths []string
	for _, a := range args {
		field, value, ok := strings.Cut(a, "=")
		if !ok || field == "" {
			return nil, nil, usageError{fmt.Errorf("%q: want FIELD=VALUE", a)}
		}
		paths = append(paths, field)
		if value == "" {
			continue // named in the mask, unset: cleared
		}
		var v any = value
		if e := enumField(field); e != nil {
			v = enumValueName(e, value)
		} else if n, err := strconv.ParseUint(value, 10, 32); err == nil {
			v = n
		} else if b, err := strconv.ParseBool(value); err == nil {
			v = b
		}
		m := doc
		parts := strings.Split(field, ".")
		for _, part := range parts[:len(parts)-1] {
			sub, _ := m[part].(map[string]any)
			if sub == nil {
				sub = map[string]any{}
				m[part] = sub
			}
			m = sub
		}
		m[parts[len(parts)-1]] = v
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, nil, err
	}
	p := &pooldv1.Policy{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(raw, p); err != nil {
		return nil, nil, usageError{fmt.Errorf("%s: %v", strings.Join(args, " "), err)}
	}
	return p, paths, nil
}

// writePolicy writes a policy's set fields, one a line.
func writePolicy(w io.Writer, p *pooldv1.Policy) {
	b, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(p)
	var fields map[string]any
	_ = json.Unmarshal(b, &fields)
	fmt.Fprintf(w, "name\t%s\n", p.GetName())
	for _, f := range setFields(p) {
		if e := enumField(f); e != nil {
			fmt.Fprintf(w, "%s\t%s\n", f, enumShortName(e, p.ProtoReflect().Get(e).Enum()))
			continue
		}
		v, _ := json.Marshal(fields[f])
		fmt.Fprintf(w, "%s\t%s\n", f, strings.Trim(string(v), `"`))
	}
	if p.GetEtag() != "" {
		fmt.Fprintf(w, "etag\t%s\n", p.GetEtag())
	}
}

// setFields names the fields p sets, in field order, name and output
// fields aside.
func setFields(p *pooldv1.Policy) []string {
	var out []string
	m := p.ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch fd.Name() {
		case "name", "etag", "update_time":
			continue
		}
		if m.Has(fd) {
			out = append(out, string(fd.Name()))
		}
	}
	return out
}

// enumField is the Policy field at a top-level path when it is an enum,
// else nil.
func enumField(path string) protoreflect.FieldDescriptor {
	fd := (*pooldv1.Policy)(nil).ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(path))
	if fd == nil || fd.Enum() == nil {
		return nil
	}
	return fd
}

// enumPrefix is what every value name of e starts with: its zero value's
// name without UNSPECIFIED, as buf's lint rules have it ("PROTOCOLS_").
func enumPrefix(e protoreflect.EnumDescriptor) string {
	zero := string(e.Values().ByNumber(0).Name())
	return strings.TrimSuffix(zero, "UNSPECIFIED")
}

// enumValueName turns a short name (h2, h2_preferred) into the value's
// full name; a full name, or a word that is neither, is left for protojson
// to accept or refuse.
func enumValueName(fd protoreflect.FieldDescriptor, value string) string {
	full := enumPrefix(fd.Enum()) + strings.ToUpper(value)
	if fd.Enum().Values().ByName(protoreflect.Name(full)) != nil {
		return full
	}
	return value
}

// enumShortName is the name set takes, for a table: h2_preferred.
func enumShortName(fd protoreflect.FieldDescriptor, n protoreflect.EnumNumber) string {
	v := fd.Enum().Values().ByNumber(n)
	if v == nil {
		return strconv.Itoa(int(n))
	}
	return strings.ToLower(strings.TrimPrefix(string(v.Name()), enumPrefix(fd.Enum())))
}
