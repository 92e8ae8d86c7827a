package pool_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"time"

	"github.com/poold/poold/pool"
)

func ExampleEngine() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer upstream.Close()

	engine, err := pool.New(pool.Options{
		// Examples must not depend on the environment's proxy settings.
		Proxy: func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		panic(err)
	}
	defer engine.Close()
	client := &http.Client{Transport: engine}

	for range 2 {
		resp, err := client.Get(upstream.URL)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t, _ := pool.TimingFrom(resp)
		fmt.Printf("%s (reused: %v)\n", body, t.Reused)
	}
	h, _ := engine.Host(upstream.Listener.Addr().String())
	fmt.Printf("requests %d, dials %d, idle %d\n", h.Counters.Requests, h.Counters.Dials, h.Idle)
	// Output:
	// hello (reused: false)
	// hello (reused: true)
	// requests 2, dials 1, idle 1
}

func ExampleEngine_SetPolicies() {
	engine, err := pool.New(pool.Options{})
	if err != nil {
		panic(err)
	}
	defer engine.Close()

	timeout := 2 * time.Second
	maxConns := uint32(8)
	err = engine.SetPolicies(pool.PolicySet{
		Hosts: map[string]pool.Policy{
			"api.example.com": {ResponseHeaderTimeout: &timeout, MaxConnsPerHost: &maxConns},
		},
	})
	if err != nil {
		panic(err)
	}
	eff := engine.EffectivePolicy("https", "api.example.com")
	fmt.Println(eff.Source, eff.ResponseHeaderTimeout, eff.MaxConnsPerHost, eff.DialTimeout)
	// Output: api.example.com 2s 8 5s
}
