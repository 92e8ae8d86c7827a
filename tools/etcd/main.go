// Command etcd is etcd's own server, built at the version tools/etcd/go.mod
// pins, for the tests that run poold against a real cluster.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
