package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// k8sObject holds the parts of the rendered manifests the test checks.
type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		Replicas *int `yaml:"replicas"`
		Ports    []struct {
			Name       string `yaml:"name"`
			TargetPort string `yaml:"targetPort"`
		} `yaml:"ports"`
		Template struct {
			Spec struct {
				TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               struct {
					RunAsNonRoot bool `yaml:"runAsNonRoot"`
				} `yaml:"securityContext"`
				Containers []k8sContainer `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sProbe struct {
	GRPC *struct {
		Port int `yaml:"port"`
	} `yaml:"grpc"`
}

type k8sContainer struct {
	Args []string `yaml:"args"`
	Env  []struct {
		Name      string `yaml:"name"`
		ValueFrom struct {
			SecretKeyRef struct{ Name, Key string } `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe  k8sProbe `yaml:"readinessProbe"`
	LivenessProbe   k8sProbe `yaml:"livenessProbe"`
	SecurityContext struct {
		ReadOnlyRootFilesystem bool `yaml:"readOnlyRootFilesystem"`
	} `yaml:"securityContext"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
	} `yaml:"resources"`
}

func TestTheKubernetesManifestsMatchWhatTheDaemonAccepts(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("kubectl not found: scripts/deps.sh installs it")
		}
		t.Skip("kubectl not found; scripts/deps.sh installs it")
	}
	out, err := exec.Command(kubectl, "kustomize", "../../deploy/kubernetes").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/kubernetes: %v", err)
	}
	objs := map[string]k8sObject{}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("rendered manifests: %v", err)
		}
		objs[o.Kind+"/"+o.Metadata.Name] = o
	}
	for _, want := range []string{"Deployment/poold", "Service/poold", "Service/poold-headless", "PodDisruptionBudget/poold", "NetworkPolicy/poold-egress", "Secret/poold-etcd"} {
		if _, ok := objs[want]; !ok {
			t.Errorf("no %s in the rendered manifests", want)
		}
	}
	dep := objs["Deployment/poold"]
	if r := dep.Spec.Replicas; r == nil || *r != 3 {
		t.Errorf("replicas = %v, want 3", r)
	}
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if !pod.SecurityContext.RunAsNonRoot || !c.SecurityContext.ReadOnlyRootFilesystem || c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" {
		t.Error("want a non-root pod, a read-only root filesystem, and cpu and memory requests")
	}

	// The daemon takes the args and the environment as they are.
	secret := objs["Secret/poold-etcd"].StringData
	env := map[string]string{}
	for _, e := range c.Env {
		ref := e.ValueFrom.SecretKeyRef
		if ref.Name != "poold-etcd" || secret[ref.Key] == "" {
			t.Errorf("env %s comes from %s/%s, which the Secret does not hold", e.Name, ref.Name, ref.Key)
		}
		env[e.Name] = secret[ref.Key]
	}
	var stderr strings.Builder
	cfg, err := parseConfig(c.Args, func(k string) string { return env[k] }, io.Discard, &stderr)
	if err != nil {
		t.Fatalf("poold refuses the Deployment's flags: %v\n%s", err, stderr.String())
	}
	if cfg.policyStore == nil {
		t.Error("the Deployment does not share its policies in etcd")
	}

	port := func(addr string) int {
		_, p, _ := strings.Cut(addr, ":")
		n, _ := strconv.Atoi(p)
		return n
	}
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["grpc"] != port(cfg.listen) || ports["http"] != port(cfg.httpListen) {
		t.Errorf("container ports %v, want grpc %s and http %s as the flags say", ports, cfg.listen, cfg.httpListen)
	}
	for name, p := range map[string]k8sProbe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p.GRPC == nil || p.GRPC.Port != port(cfg.listen) {
			t.Errorf("%s probe = %+v, want gRPC health on the --listen port %s", name, p, cfg.listen)
		}
	}
	if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace <= cfg.shutdownDelay+cfg.shutdownGrace {
		t.Errorf("terminationGracePeriodSeconds = %v, want more than --shutdown-delay %v plus --shutdown-grace %v", grace, cfg.shutdownDelay, cfg.shutdownGrace)
	}
	for _, svc := range []string{"Service/poold", "Service/poold-headless"} {
		for _, p := range objs[svc].Spec.Ports {
			if _, ok := ports[p.TargetPort]; !ok {
				t.Errorf("%s targets port %q, which the container does not name", svc, p.TargetPort)
			}
		}
	}
}
