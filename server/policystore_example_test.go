package server_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
	"github.com/poold/poold/pool"
	"github.com/poold/poold/server"
)

func ExamplePolicyStore() {
	// The daemon passes its engine's SetPolicies and a policy file path.
	apply := func(s pool.PolicySet) error { return s.Validate() }
	store, err := server.OpenPolicyStore("", apply, time.Now)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	// Create a wildcard policy that sets one field.
	_, err = store.Update(ctx, &pooldv1.Policy{
		Name:            "policies/*.example.com",
		IdleConnTimeout: durationpb.New(45 * time.Second),
	}, nil, true)
	if err != nil {
		log.Fatal(err)
	}

	// Change the default's dial timeout, guarded by its etag.
	def, err := store.Get("policies/default")
	if err != nil {
		log.Fatal(err)
	}
	_, err = store.Update(ctx, &pooldv1.Policy{
		Name:        "policies/default",
		DialTimeout: durationpb.New(2 * time.Second),
		Etag:        def.GetEtag(),
	}, &fieldmaskpb.FieldMask{Paths: []string{"dial_timeout"}}, false)
	if err != nil {
		log.Fatal(err)
	}

	eff, err := store.Effective("api.example.com:443")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(eff.GetName(), eff.GetIdleConnTimeout().AsDuration(), eff.GetDialTimeout().AsDuration())
	// Output: policies/*.example.com 45s 2s
}
