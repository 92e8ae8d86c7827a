module github.com/poold/poold/bench

go 1.26.0

require (
	github.com/poold/poold v0.0.0-00010101000000-000000000000
	github.com/valyala/fasthttp v1.79.0
	google.golang.org/grpc v1.85.0
)

require (
	github.com/klauspost/compress v1.20.4 // indirect
	github.com/molecule-man/go-brrr v1.3.1 // indirect
	github.com/planetscale/vtprotobuf v0.6.1-0.20240319094008-0393e58bdf10 // indirect
	github.com/valyala/bytebufferpool v1.0.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261026165753-2ffab32bce7e // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

// The benchmark drives the daemon in this repository through its generated
// API, so it builds against the working tree rather than a published version.
replace github.com/poold/poold => ../
