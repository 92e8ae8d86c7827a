package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/poold/poold/server"
)

// config is the daemon's whole configuration, from flags and environment.
type config struct {
	listen         string
	httpListen     string
	logLevel       slog.Level
	logFormat      string
	shutdownGrace  time.Duration
	shutdownDelay  time.Duration
	maxRecvMsgSize byteSize
	maxSendMsgSize byteSize
	maxBodySize    byteSize
	maxBuffered    byteSize
	policyFile     string
	policyStore    *etcdStore // nil: --policy-file or memory
	startStale     bool
	etcdCAFile     string
	etcdCertFile   string
	etcdKeyFile    string
	etcdUsername   string
	etcdPassFile   string
	debugListen    string
	httpAPIListen  string
	debugPublic    bool
	upstreamCAFile string
	metricsHosts   int
	idlePool       time.Duration

	adminTokenFile    string
	clientTokenFile   string
	tlsCert, tlsKey   string
	clientCA          string
	maxInFlight       int
	maxDialsPerHost   int
	maxStreamsPerConn uint
	maxPipelineDepth  int
	accessLog         bool
	trustedCallers    bool

	gcPercent         int
	streamWorkers     uint
	sharedWriteBuffer bool
	streamWindow      byteSize

	egressAllow, egressDeny stringList
	egressDefaultDeny       bool
	egressPorts             portList

	keepaliveMinTime             time.Duration
	keepalivePermitWithoutStream bool
	keepaliveTime                time.Duration
	keepaliveTimeout             time.Duration
	maxConnectionIdle            time.Duration
	maxConnectionAge             time.Duration
	maxConnectionAgeGrace        time.Duration

	// tracing is on when the OTEL_* variables ask for traces
	// (tracingFromEnv); they configure the rest themselves.
	tracing bool
}

// usageError is a bad command line or environment; the daemon exits 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// errHelp reports that --help was asked for and printed.
var errHelp = errors.New("help requested")

// envName is the environment variable backing a flag: --http-listen ↔
// POOLD_HTTP_LISTEN.
func envName(flagName string) string {
	return "POOLD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig reads flags, then fills every flag not given on the command line
// from its environment variable. Flags win so that a one-off override works
// in a container whose environment is fixed.
func parseConfig(args []string, getenv func(string) string, stdout, stderr io.Writer) (*config, error) {
	cfg := &config{
		listen:          ":7070",
		httpListen:      ":9090",
		logFormat:       "text",
		shutdownGrace:   15 * time.Second,
		shutdownDelay:   5 * time.Second,
		maxRecvMsgSize:  32 << 20,
		maxSendMsgSize:  32 << 20,
		maxBodySize:     16 << 20,
		maxBuffered:     1 << 30,
		metricsHosts:    100,
		idlePool:        time.Minute,
		maxInFlight:     4096,
		maxDialsPerHost: 64,

		maxStreamsPerConn: 1000,
		maxPipelineDepth:  server.DefaultPipelineDepth,
		gcPercent:         gcPercentUnset,
		streamWorkers:     64,
		sharedWriteBuffer: false,

		keepaliveMinTime: 10 * time.Second,
		keepaliveTime:    2 * time.Hour,
		keepaliveTimeout: 20 * time.Second,
	}
	fs := flag.NewFlagSet("poold", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Func("listen", "gRPC listen address, host:port (default \":7070\")", listenAddr(&cfg.listen))
	fs.Func("http-listen", "address for /metrics, /healthz and /readyz, host:port (default \":9090\")", listenAddr(&cfg.httpListen))
	fs.TextVar(&cfg.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.Func("log-format", "log format: text or json (default \"text\")", oneOf(&cfg.logFormat, "text", "json"))
	fs.DurationVar(&cfg.shutdownGrace, "shutdown-grace", cfg.shutdownGrace, "time in-flight RPCs get to finish on SIGTERM before connections are cut")
	fs.DurationVar(&cfg.shutdownDelay, "shutdown-delay", cfg.shutdownDelay, "on SIGTERM, time between reporting NOT_SERVING and refusing calls, for load balancers to notice")
	fs.Var(&cfg.maxRecvMsgSize, "max-recv-msg-size", "largest gRPC message accepted, e.g. 32MiB; bounds a Do request body (default 32MiB)")
	fs.Var(&cfg.maxSendMsgSize, "max-send-msg-size", "largest gRPC message sent, e.g. 32MiB (default 32MiB)")
	fs.Var(&cfg.maxBuffered, "max-buffered-bytes", "response body bytes Do and Pipeline hold at once across all callers; a body that does not fit fails with OVERLOADED (Stream is not counted; 0 = no bound) (default 1GiB)")
	fs.Var(&cfg.maxBodySize, "max-body-size", "largest upstream response body Do returns; larger ones fail with BODY_TOO_LARGE (use Stream) (default 16MiB)")
	fs.Func("http-api-listen", "address for the HTTP/JSON API (HTTPService.Do and the read-only pool and policy calls, as Connect unary POSTs), host:port (empty = off)", listenAddr(&cfg.httpAPIListen))
	fs.Func("debug-listen", "address serving net/http/pprof for profiling, host:port on loopback (empty = off)", listenAddr(&cfg.debugListen))
	fs.BoolVar(&cfg.debugPublic, "debug-listen-public", false, "allow --debug-listen on an address other hosts can reach")
	fs.StringVar(&cfg.policyFile, "policy-file", "", "JSON file the policies are loaded from and every change is saved to (empty = policies live in memory only)")
	fs.Func("policy-store", "policies and egress rule sets shared by replicas in etcd: etcd://HOST:PORT[,HOST:PORT...]/PREFIX (exclusive with --policy-file)", func(v string) error {
		st, err := parseEtcdStore(v)
		cfg.policyStore = st
		return err
	})
	fs.BoolVar(&cfg.startStale, "policy-store-start-stale", false, "report ready on the built-in defaults when --policy-store cannot be reached at start, instead of waiting for the first full read")
	fs.StringVar(&cfg.etcdCAFile, "etcd-ca-file", "", "PEM CA that etcd's certificate chains to (turns on TLS to etcd)")
	fs.StringVar(&cfg.etcdCertFile, "etcd-cert-file", "", "PEM client certificate for etcd (with --etcd-key-file; turns on TLS to etcd)")
	fs.StringVar(&cfg.etcdKeyFile, "etcd-key-file", "", "PEM private key for --etcd-cert-file")
	fs.StringVar(&cfg.etcdUsername, "etcd-username", "", "user for etcd's auth (with --etcd-password-file)")
	fs.StringVar(&cfg.etcdPassFile, "etcd-password-file", "", "file holding the password of --etcd-username")
	fs.StringVar(&cfg.upstreamCAFile, "upstream-ca-file", "", "PEM file of CA certificates trusted for upstream TLS, in addition to the system roots")
	fs.IntVar(&cfg.metricsHosts, "metrics-max-hosts", cfg.metricsHosts, "hosts with their own label in pool metrics, the first ones reached; the rest are summed under host=\"_other\"")
	fs.DurationVar(&cfg.idlePool, "idle-pool-timeout", cfg.idlePool, "how long a host pool with no connections and no requests is kept before its memory is returned; its counters stay in the metrics (0 = keep every pool)")
	fs.StringVar(&cfg.adminTokenFile, "admin-token-file", "", "file of bearer tokens (one a line) that PoolService and PolicyService require; reread on SIGHUP or change (empty = open)")
	fs.StringVar(&cfg.clientTokenFile, "client-token-file", "", "file of bearer tokens that HTTPService requires; reread on SIGHUP or change (empty = open)")
	fs.StringVar(&cfg.tlsCert, "tls-cert", "", "PEM certificate for the gRPC listener (with --tls-key; empty = plaintext)")
	fs.StringVar(&cfg.tlsKey, "tls-key", "", "PEM private key for --tls-cert")
	fs.StringVar(&cfg.clientCA, "client-ca", "", "PEM CA that client certificates must chain to (mTLS; needs --tls-cert)")
	fs.IntVar(&cfg.maxInFlight, "max-in-flight", cfg.maxInFlight, "HTTPService calls running at once across all callers; more fail with RESOURCE_EXHAUSTED")
	fs.IntVar(&cfg.maxDialsPerHost, "max-dials-per-host", cfg.maxDialsPerHost, "dials in flight per upstream host; requests over it wait for a dial or a connection")
	fs.UintVar(&cfg.maxStreamsPerConn, "grpc-max-concurrent-streams", cfg.maxStreamsPerConn, "RPCs in flight on one caller connection")
	fs.IntVar(&cfg.maxPipelineDepth, "max-pipeline-depth", cfg.maxPipelineDepth, "requests one Pipeline call may have outstanding; the caller waits (gRPC flow control) for more")
	fs.BoolVar(&cfg.trustedCallers, "trusted-callers", false, "every caller is trusted: error messages name resolved addresses and egress rules, which by default only the log has")
	fs.BoolVar(&cfg.accessLog, "access-log", false, "log a line for every call when it ends (failed calls and egress denials are logged without it)")
	fs.IntVar(&cfg.gcPercent, "gc-percent", cfg.gcPercent, "heap growth that triggers a garbage collection, as GOGC sets it, -1 = off (default 400, or GOGC when set)")
	fs.UintVar(&cfg.streamWorkers, "grpc-stream-workers", cfg.streamWorkers, "goroutines kept to run RPCs, saving a new one per call; calls beyond them still run (0 = a goroutine per call)")
	fs.BoolVar(&cfg.sharedWriteBuffer, "grpc-shared-write-buffer", cfg.sharedWriteBuffer, "return a caller connection's write buffer to a shared pool between writes, so idle connections hold none")
	fs.Var(&cfg.streamWindow, "grpc-stream-window", "fixed HTTP/2 flow-control window per stream (16x per connection), from 64KiB to 128MiB; off = grpc-go's bandwidth probing (default off)")
	fs.Var(&cfg.egressAllow, "egress-allow", "CIDR, IP, host or *.suffix poold may connect to, even inside a built-in deny (repeatable or comma-separated; e.g. 127.0.0.1/32 for a local upstream — this opens that address to every caller)")
	fs.Var(&cfg.egressDeny, "egress-deny", "CIDR, IP, host or *.suffix poold must never connect to (repeatable or comma-separated)")
	fs.BoolVar(&cfg.egressDefaultDeny, "egress-default-deny", false, "allow-list mode: deny every address no --egress-allow rule allows")
	fs.Var(&cfg.egressPorts, "egress-allowed-ports", "the only upstream ports poold may connect to, comma-separated (empty = any)")
	fs.DurationVar(&cfg.keepaliveMinTime, "grpc-keepalive-min-time", cfg.keepaliveMinTime, "shortest interval allowed between a caller's keep-alive pings")
	fs.BoolVar(&cfg.keepalivePermitWithoutStream, "grpc-keepalive-permit-without-stream", false, "allow caller keep-alive pings while no RPC is in flight")
	fs.DurationVar(&cfg.keepaliveTime, "grpc-keepalive-time", cfg.keepaliveTime, "ping a caller connection after this long without activity")
	fs.DurationVar(&cfg.keepaliveTimeout, "grpc-keepalive-timeout", cfg.keepaliveTimeout, "close a caller connection whose ping is unanswered this long")
	fs.DurationVar(&cfg.maxConnectionIdle, "grpc-max-connection-idle", 0, "close caller connections idle this long (0 = never)")
	fs.DurationVar(&cfg.maxConnectionAge, "grpc-max-connection-age", 0, "close caller connections this old, so load spreads after scaling (0 = never)")
	fs.DurationVar(&cfg.maxConnectionAgeGrace, "grpc-max-connection-age-grace", 0, "time RPCs get to finish on a connection closed for age (0 = unlimited)")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, stdout)
			return nil, errHelp
		}
		// The flag package names flags with one dash; poold documents two.
		msg := strings.NewReplacer("for flag -", "for --", "not defined: -", "not defined: --").Replace(err.Error())
		fmt.Fprintf(stderr, "poold: %s\nRun 'poold --help' for usage.\n", msg)
		return nil, &usageError{msg: msg}
	}
	if fs.NArg() > 0 {
		msg := fmt.Sprintf("unexpected argument %q: poold takes flags only", fs.Arg(0))
		fmt.Fprintf(stderr, "poold: %s\n", msg)
		return nil, &usageError{msg: msg}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || envErr != nil {
			return
		}
		name := envName(f.Name)
		v := getenv(name)
		if v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			envErr = &usageError{msg: fmt.Sprintf("invalid value %q for %s (from %s): %v", v, "--"+f.Name, name, err)}
		}
	})
	if envErr != nil {
		fmt.Fprintf(stderr, "poold: %v\n", envErr)
		return nil, envErr
	}
	for _, check := range []struct {
		bad  bool
		flag string
		val  any
		why  string
	}{
		{cfg.shutdownGrace < 0, "--shutdown-grace", cfg.shutdownGrace, "must not be negative"},
		{cfg.shutdownDelay < 0, "--shutdown-delay", cfg.shutdownDelay, "must not be negative"},
		{cfg.maxBuffered != 0 && cfg.maxBuffered <= cfg.maxBodySize, "--max-buffered-bytes", &cfg.maxBuffered, "must be more than --max-body-size (or 0 for no bound), or no body of that size could fit"},
		{cfg.metricsHosts < 1, "--metrics-max-hosts", cfg.metricsHosts, "must be at least 1"},
		{cfg.idlePool < 0, "--idle-pool-timeout", cfg.idlePool, "must not be negative"},
		{cfg.maxInFlight < 1, "--max-in-flight", cfg.maxInFlight, "must be at least 1"},
		{cfg.maxDialsPerHost < 1, "--max-dials-per-host", cfg.maxDialsPerHost, "must be at least 1"},
		{cfg.maxStreamsPerConn < 1 || cfg.maxStreamsPerConn > 1<<31, "--grpc-max-concurrent-streams", cfg.maxStreamsPerConn, "must be from 1 to 2147483648"},
		{cfg.gcPercent < -1 && cfg.gcPercent != gcPercentUnset, "--gc-percent", cfg.gcPercent, "must be -1 (off) or at least 0"},
		{cfg.maxPipelineDepth < 1, "--max-pipeline-depth", cfg.maxPipelineDepth, "must be at least 1"},
		{cfg.streamWorkers > 1<<16, "--grpc-stream-workers", cfg.streamWorkers, "must be at most 65536"},
		{cfg.streamWindow != 0 && (cfg.streamWindow < 64<<10 || cfg.streamWindow > 128<<20), "--grpc-stream-window", &cfg.streamWindow, "must be from 64KiB to 128MiB"},
		{(cfg.tlsCert == "") != (cfg.tlsKey == ""), "--tls-key", cfg.tlsKey, "--tls-cert and --tls-key go together"},
		{cfg.clientCA != "" && cfg.tlsCert == "", "--client-ca", cfg.clientCA, "needs --tls-cert and --tls-key"},
		{cfg.policyStore != nil && cfg.policyFile != "", "--policy-store", cfg.policyStore, "--policy-store and --policy-file are exclusive: policies live in etcd or in a file"},
		{cfg.policyStore == nil && (cfg.etcdCAFile != "" || cfg.etcdCertFile != "" || cfg.etcdUsername != "" || cfg.etcdPassFile != "" || cfg.startStale), "--policy-store", "", "the --etcd-* flags and --policy-store-start-stale need --policy-store"},
		{(cfg.etcdCertFile == "") != (cfg.etcdKeyFile == ""), "--etcd-key-file", cfg.etcdKeyFile, "--etcd-cert-file and --etcd-key-file go together"},
		{(cfg.etcdUsername == "") != (cfg.etcdPassFile == ""), "--etcd-password-file", cfg.etcdPassFile, "--etcd-username and --etcd-password-file go together"},
		{checkDebugListen(cfg.debugListen, cfg.debugPublic) != nil, "--debug-listen", cfg.debugListen, fmt.Sprint(checkDebugListen(cfg.debugListen, cfg.debugPublic))},
	} {
		if check.bad {
			msg := fmt.Sprintf("invalid value \"%v\" for %s: %s", check.val, check.flag, check.why)
			fmt.Fprintf(stderr, "poold: %s\n", msg)
			return nil, &usageError{msg: msg}
		}
	}
	tracing, err := tracingFromEnv(getenv)
	if err != nil {
		fmt.Fprintf(stderr, "poold: %v\n", err)
		return nil, err
	}
	cfg.tracing = tracing
	return cfg, nil
}

func printUsage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "Usage: poold [flags]\n\npoold runs HTTP requests for its gRPC callers on pooled upstream connections.\nEvery flag can also be set from the environment variable shown.\n\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		fmt.Fprintf(w, "  --%s  (%s)\n    \t%s\n", f.Name, envName(f.Name), f.Usage)
		if f.DefValue != "" && !strings.Contains(f.Usage, "(default") {
			fmt.Fprintf(w, "    \t(default %s)\n", f.DefValue)
		}
	})
}

// listenAddr accepts host:port with a numeric port; an empty host listens on
// every interface.
func listenAddr(dst *string) func(string) error {
	return func(s string) error {
		_, port, err := net.SplitHostPort(s)
		if err != nil {
			return fmt.Errorf("want host:port, e.g. \":7070\" or \"127.0.0.1:7070\": %v", err)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
			return fmt.Errorf("port %q is not a number from 0 to 65535", port)
		}
		*dst = s
		return nil
	}
}

func oneOf(dst *string, allowed ...string) func(string) error {
	return func(s string) error {
		for _, a := range allowed {
			if s == a {
				*dst = s
				return nil
			}
		}
		return fmt.Errorf("want one of %s", strings.Join(allowed, ", "))
	}
}

// byteSize is a flag value in bytes that also takes KiB, MiB and GiB
// suffixes.
type byteSize int

func (b *byteSize) String() string {
	switch n := int(*b); {
	case n != 0 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n != 0 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n != 0 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	default:
		return strconv.Itoa(n)
	}
}

func (b *byteSize) Set(s string) error {
	mult := 1
	num := s
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 || n > (1<<31-1)/int64(mult) {
		return fmt.Errorf("want a positive size below 2GiB, e.g. 4194304, 512KiB or 32MiB")
	}
	*b = byteSize(n * int64(mult))
	return nil
}

// stringList is a repeatable flag whose values may also be comma-separated.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

// portList is a comma-separated list of TCP ports.
type portList []uint16

func (l *portList) String() string {
	parts := make([]string, len(*l))
	for i, p := range *l {
		parts[i] = strconv.Itoa(int(p))
	}
	return strings.Join(parts, ",")
}

func (l *portList) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v == "" {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("port %q is not a number from 1 to 65535", v)
		}
		*l = append(*l, uint16(n))
	}
	return nil
}

// etcdStore is a --policy-store value: where in etcd the policies are.
type etcdStore struct {
	endpoints []string
	prefix    string
}

func (e *etcdStore) String() string {
	if e == nil {
		return ""
	}
	return "etcd://" + strings.Join(e.endpoints, ",") + e.prefix
}

// parseEtcdStore reads etcd://HOST:PORT[,HOST:PORT...]/PREFIX.
func parseEtcdStore(v string) (*etcdStore, error) {
	const want = "want etcd://HOST:PORT[,HOST:PORT...]/PREFIX, e.g. etcd://10.0.0.1:2379,10.0.0.2:2379/poold"
	rest, ok := strings.CutPrefix(v, "etcd://")
	if !ok {
		return nil, fmt.Errorf("%s", want)
	}
	hosts, prefix, ok := strings.Cut(rest, "/")
	if !ok || strings.Trim(prefix, "/") == "" {
		return nil, fmt.Errorf("no key prefix: %s", want)
	}
	st := &etcdStore{prefix: "/" + strings.Trim(prefix, "/")}
	for _, h := range strings.Split(hosts, ",") {
		host, port, err := net.SplitHostPort(h)
		if err != nil || host == "" {
			return nil, fmt.Errorf("endpoint %q is not HOST:PORT: %s", h, want)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("endpoint %q: port %q is not a number from 1 to 65535", h, port)
		}
		st.endpoints = append(st.endpoints, h)
	}
	return st, nil
}
