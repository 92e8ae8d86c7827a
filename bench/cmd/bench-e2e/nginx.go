package main

import (
	"fmt"
	"path/filepath"
	"strings"
)

// nginxConfig returns a config that runs nginx in the foreground as a
// keep-alive reverse proxy in front of upstream (a base URL), with every
// file it writes inside dir.
//
// keepalive_requests is raised on both sides because nginx's default of
// 1000 would close a connection every 1000 requests, making it pay for TCP
// setup that the gRPC targets, on long-lived connections, never pay.
func nginxConfig(dir, listen, upstream string, root bool) string {
	p := func(name string) string { return filepath.Join(dir, name) }
	var b strings.Builder
	if root {
		// As root, workers would otherwise switch to a user that may not
		// exist here or may not write the temp dir.
		b.WriteString("user root;\n")
	}
	fmt.Fprintf(&b, `daemon off;
master_process on;
worker_processes auto;
error_log %s warn;
pid %s;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path %s;
    proxy_temp_path %s;
    fastcgi_temp_path %s;
    uwsgi_temp_path %s;
    scgi_temp_path %s;
    keepalive_requests 1000000;

    upstream bench_upstream {
        server %s;
        keepalive 64;
        keepalive_requests 1000000;
    }

    server {
        listen %s;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`, p("error.log"), p("nginx.pid"), p("client_body"), p("proxy"), p("fastcgi"), p("uwsgi"), p("scgi"),
		strings.TrimPrefix(upstream, "http://"), listen)
	return b.String()
}
