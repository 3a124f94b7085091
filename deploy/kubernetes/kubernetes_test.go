package kubernetes_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/hopwatch/hopwatch/config"
)

// overlays are every kustomization a user may apply, with what each must
// hold.
var overlays = []struct {
	dir   string
	kinds []string // every kind the rendering must contain
}{
	{"base", []string{"ServiceAccount", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor"}},
	{"overlays/production", []string{"Namespace", "ServiceAccount", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor"}},
	{"overlays/sidecar", []string{"Deployment", "ConfigMap", "PodMonitor", "NetworkPolicy"}},
}

// drainMargin is what terminationGracePeriodSeconds must leave beyond the
// preStop sleep and -grace: kubelet's SIGKILL comes at the end of the
// period, and the process still has to flush and exit after its drain.
const drainMargin = 5 * time.Second

// TestOverlays renders every overlay with kustomize's own library, decodes
// every object strictly into its Kubernetes (or Prometheus Operator) Go
// type, and checks what running hopwatch in a pod needs.
func TestOverlays(t *testing.T) {
	for _, o := range overlays {
		t.Run(o.dir, func(t *testing.T) {
			objs := render(t, o.dir)
			var kinds []string
			for _, obj := range objs {
				if !slices.Contains(kinds, obj.kind) {
					kinds = append(kinds, obj.kind)
				}
			}
			for _, k := range o.kinds {
				if !slices.Contains(kinds, k) {
					t.Errorf("no %s rendered (got %v)", k, kinds)
				}
			}
			checkObjects(t, objs)
		})
	}
}

// object is one rendered manifest, decoded.
type object struct {
	kind, name string
	value      any // pointer to the typed object
}

// typed gives, per apiVersion and kind, the Go type an object must decode
// into. A kind not listed fails the test: every manifest is checked.
func typed(apiVersion, kind string) (any, bool) {
	switch apiVersion + " " + kind {
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1 Service":
		return &corev1.Service{}, true
	case "v1 Namespace":
		return &corev1.Namespace{}, true
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, true
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "autoscaling/v2 HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, true
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, true
	case "monitoring.coreos.com/v1 PodMonitor":
		return &monitoringv1.PodMonitor{}, true
	}
	return nil, false
}

func render(t *testing.T, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []object
	for _, r := range rm.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		obj, err := decodeStrict(data)
		if err != nil {
			t.Errorf("%s %s: %v", r.GetKind(), r.GetName(), err)
			continue
		}
		objs = append(objs, obj)
	}
	return objs
}

// decodeStrict decodes one manifest the way the API server does: field
// names case-sensitive, unknown and duplicate fields are errors.
func decodeStrict(data []byte) (object, error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		return object{}, err
	}
	v, ok := typed(meta.APIVersion, meta.Kind)
	if !ok {
		return object{}, fmt.Errorf("no Go type known for apiVersion %q kind %q", meta.APIVersion, meta.Kind)
	}
	strict, err := kjson.UnmarshalStrict(data, v)
	if err != nil {
		return object{}, err
	}
	if len(strict) > 0 {
		return object{}, fmt.Errorf("strict decoding: %v", strict)
	}
	return object{kind: meta.Kind, name: meta.Metadata.Name, value: v}, nil
}

// TestDecodeStrict shows that the decoder the overlays are checked with
// refuses what the API server would: a misspelt or miscased field would
// otherwise pass unseen (a probe that is never set, say).
func TestDecodeStrict(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		ok        bool
	}{
		{"valid", `{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}]}}`, true},
		{"unknown field", `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"a"},"spec":{"template":{"spec":{"containers":[{"name":"c","readinesProbe":{}}]}}}}`, false},
		{"miscased field", `{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"Ports":[{"port":1}]}}`, false},
		{"duplicate field", `{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"type":"ClusterIP","type":"NodePort"}}`, false},
		{"unknown kind", `{"apiVersion":"v1","kind":"Secret","metadata":{"name":"a"}}`, false},
		{"unknown field in a CRD", `{"apiVersion":"monitoring.coreos.com/v1","kind":"ServiceMonitor","metadata":{"name":"a"},"spec":{"endpoints":[{"port":"admin","intervall":"15s"}],"selector":{}}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeStrict([]byte(tc.doc))
			if (err == nil) != tc.ok {
				t.Errorf("decodeStrict = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func checkObjects(t *testing.T, objs []object) {
	configMaps := map[string]*corev1.ConfigMap{}
	deployments := map[string]*appsv1.Deployment{}
	services := map[string]*corev1.Service{}
	for _, o := range objs {
		switch v := o.value.(type) {
		case *corev1.ConfigMap:
			configMaps[v.Name] = v
		case *appsv1.Deployment:
			deployments[v.Name] = v
		case *corev1.Service:
			services[v.Name] = v
		}
	}
	var hopwatchPods []*corev1.PodTemplateSpec
	for _, d := range deployments {
		if sel := d.Spec.Selector; sel == nil || !selects(sel.MatchLabels, d.Spec.Template.Labels) {
			t.Errorf("Deployment %s: selector %v does not select its pods %v", d.Name, d.Spec.Selector, d.Spec.Template.Labels)
		}
		if checkPod(t, "Deployment "+d.Name, &d.Spec.Template, configMaps) {
			hopwatchPods = append(hopwatchPods, &d.Spec.Template)
		}
	}
	if len(hopwatchPods) == 0 {
		t.Fatal("no Deployment runs a container named hopwatch")
	}
	// Every selector must find hopwatch's pods (a typo in a label leaves a
	// PDB or a NetworkPolicy guarding nothing, silently).
	selectsAPod := func(labels map[string]string) bool {
		for _, p := range hopwatchPods {
			if selects(labels, p.Labels) {
				return true
			}
		}
		return false
	}
	adminGuarded := false
	for _, o := range objs {
		switch v := o.value.(type) {
		case *corev1.Service:
			if !selectsAPod(v.Spec.Selector) {
				t.Errorf("Service %s: selector %v selects no hopwatch pod", v.Name, v.Spec.Selector)
			}
			for _, p := range v.Spec.Ports {
				if !podsHavePort(hopwatchPods, p.TargetPort) {
					t.Errorf("Service %s port %s: targetPort %s is no container port", v.Name, p.Name, p.TargetPort.String())
				}
			}
		case *policyv1.PodDisruptionBudget:
			if v.Spec.Selector == nil || !selectsAPod(v.Spec.Selector.MatchLabels) {
				t.Errorf("PodDisruptionBudget %s selects no hopwatch pod", v.Name)
			}
			if v.Spec.MinAvailable == nil && v.Spec.MaxUnavailable == nil {
				t.Errorf("PodDisruptionBudget %s: neither minAvailable nor maxUnavailable", v.Name)
			}
		case *networkingv1.NetworkPolicy:
			if !selectsAPod(v.Spec.PodSelector.MatchLabels) {
				t.Errorf("NetworkPolicy %s selects no hopwatch pod", v.Name)
			}
			for _, rule := range v.Spec.Ingress {
				for _, p := range rule.Ports {
					if p.Port == nil || !podsHavePort(hopwatchPods, *p.Port) {
						t.Errorf("NetworkPolicy %s: port %v is no container port", v.Name, p.Port)
						continue
					}
					// The admin port shows configuration, traces and
					// sessions: never open to every peer.
					if strings.HasSuffix(p.Port.String(), "admin") {
						adminGuarded = true
						if len(rule.From) == 0 {
							t.Errorf("NetworkPolicy %s opens the admin port %s to every peer", v.Name, p.Port.String())
						}
					}
				}
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			ref := v.Spec.ScaleTargetRef
			d, ok := deployments[ref.Name]
			if ref.Kind != "Deployment" || !ok {
				t.Errorf("HorizontalPodAutoscaler %s: target %s %s not rendered", v.Name, ref.Kind, ref.Name)
				continue
			}
			if v.Spec.MinReplicas == nil || *v.Spec.MinReplicas < 2 {
				t.Errorf("HorizontalPodAutoscaler %s: minReplicas %v; want at least 2, so that the PodDisruptionBudget lets a drain go on", v.Name, v.Spec.MinReplicas)
			}
			if d.Spec.Replicas != nil && v.Spec.MinReplicas != nil && *d.Spec.Replicas < *v.Spec.MinReplicas {
				t.Errorf("Deployment %s: %d replicas, under its autoscaler's minimum %d", d.Name, *d.Spec.Replicas, *v.Spec.MinReplicas)
			}
			for _, c := range d.Spec.Template.Spec.Containers {
				if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
					t.Errorf("HorizontalPodAutoscaler %s scales on CPU but container %s requests none", v.Name, c.Name)
				}
			}
		case *monitoringv1.ServiceMonitor:
			var found bool
			for _, s := range services {
				if !selects(v.Spec.Selector.MatchLabels, s.Labels) {
					continue
				}
				found = true
				for _, e := range v.Spec.Endpoints {
					if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == e.Port }) {
						t.Errorf("ServiceMonitor %s: Service %s has no port %q", v.Name, s.Name, e.Port)
					}
					if e.Path != "/metrics" {
						t.Errorf("ServiceMonitor %s: path %q, want /metrics", v.Name, e.Path)
					}
				}
			}
			if !found {
				t.Errorf("ServiceMonitor %s: selector %v selects no Service", v.Name, v.Spec.Selector.MatchLabels)
			}
			checkScrapeProtocols(t, "ServiceMonitor "+v.Name, v.Spec.ScrapeProtocols)
		case *monitoringv1.PodMonitor:
			if !selectsAPod(v.Spec.Selector.MatchLabels) {
				t.Errorf("PodMonitor %s selects no hopwatch pod", v.Name)
			}
			for _, e := range v.Spec.PodMetricsEndpoints {
				if e.Port == nil || !podsHavePort(hopwatchPods, intstr.FromString(*e.Port)) {
					t.Errorf("PodMonitor %s: port %v is no container port", v.Name, e.Port)
				}
			}
			checkScrapeProtocols(t, "PodMonitor "+v.Name, v.Spec.ScrapeProtocols)
		}
	}
	if !adminGuarded {
		t.Error("no NetworkPolicy limits who reaches the admin port (it listens on the pod IP with allow_remote)")
	}
}

// checkScrapeProtocols: exemplars (the jump from a latency panel to a
// trace) come only with OpenMetrics, and the rules read classic _bucket
// series, which a protobuf scrape with native histograms on would not
// store.
func checkScrapeProtocols(t *testing.T, what string, ps []monitoringv1.ScrapeProtocol) {
	if len(ps) == 0 || !strings.HasPrefix(string(ps[0]), "OpenMetricsText") {
		t.Errorf("%s: scrapeProtocols %v; want OpenMetrics first", what, ps)
	}
	if slices.Contains(ps, monitoringv1.PrometheusProto) {
		t.Errorf("%s: scrapeProtocols %v include PrometheusProto", what, ps)
	}
}

// checkPod checks the hopwatch container of a pod, if it has one (as a
// container, or as a native sidecar: an init container with restartPolicy
// Always), and reports whether it had one.
func checkPod(t *testing.T, what string, pod *corev1.PodTemplateSpec, configMaps map[string]*corev1.ConfigMap) bool {
	spec := &pod.Spec
	var c *corev1.Container
	sidecar := false
	for i := range spec.Containers {
		if spec.Containers[i].Name == "hopwatch" {
			c = &spec.Containers[i]
		}
	}
	for i := range spec.InitContainers {
		if ic := &spec.InitContainers[i]; ic.Name == "hopwatch" {
			if ic.RestartPolicy == nil || *ic.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("%s: init container hopwatch is not a native sidecar (restartPolicy: Always): it would block the pod's start", what)
			}
			c, sidecar = ic, true
		}
	}
	if c == nil {
		return false
	}
	what += " container hopwatch"
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: the pod mounts a service account token; hopwatch calls no Kubernetes API", what)
	}

	// Security: non-root, no privilege escalation, read-only root file
	// system, no capabilities, the runtime's seccomp profile. Container
	// settings override the pod's.
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	csc := c.SecurityContext
	if csc == nil {
		t.Fatalf("%s: no securityContext", what)
	}
	if !orPod(csc.RunAsNonRoot, psc.RunAsNonRoot) {
		t.Errorf("%s: runAsNonRoot not set", what)
	}
	if uid := csc.RunAsUser; uid == nil && psc.RunAsUser == nil || uid != nil && *uid == 0 || uid == nil && *psc.RunAsUser == 0 {
		t.Errorf("%s: no non-zero runAsUser (an image without USER would run as root and fail runAsNonRoot)", what)
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation not false", what)
	}
	if csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem not true", what)
	}
	if csc.Privileged != nil && *csc.Privileged {
		t.Errorf("%s: privileged", what)
	}
	if csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") || len(csc.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities %v; want drop [ALL], add none", what, csc.Capabilities)
	}
	seccomp := csc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile %v; want RuntimeDefault", what, seccomp)
	}

	// Resources: requests for scheduling (and the autoscaler), a memory
	// limit at or above the request.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, ok := c.Resources.Requests[r]
		if !ok {
			t.Errorf("%s: no %s request", what, r)
			continue
		}
		if lim, ok := c.Resources.Limits[r]; ok && lim.Cmp(req) < 0 {
			t.Errorf("%s: %s limit %s under its request %s", what, r, lim.String(), req.String())
		}
	}
	if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
		t.Errorf("%s: no memory limit", what)
	}

	// Flags: the configuration file and the drain time.
	flags := map[string]string{}
	for _, a := range c.Args {
		k, v, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		flags[k] = v
	}
	cfgPath := flags["config"]
	if cfgPath == "" || !path.IsAbs(cfgPath) {
		t.Fatalf("%s: args %v; want -config=/absolute/path", what, c.Args)
	}
	grace, err := time.ParseDuration(flags["grace"])
	if err != nil {
		t.Fatalf("%s: args %v; want -grace=DURATION written out (it must match terminationGracePeriodSeconds): %v", what, c.Args, err)
	}
	var preStop time.Duration
	if lc := c.Lifecycle; lc != nil && lc.PreStop != nil {
		if lc.PreStop.Sleep == nil {
			t.Errorf("%s: preStop is not a sleep action (an exec would need a shell in the image)", what)
		} else {
			preStop = time.Duration(lc.PreStop.Sleep.Seconds) * time.Second
		}
	}
	if !sidecar && preStop == 0 {
		t.Errorf("%s: no preStop sleep: the pod would stop accepting while Services still send it traffic", what)
	}
	if spec.TerminationGracePeriodSeconds == nil {
		t.Errorf("%s: terminationGracePeriodSeconds unset (default 30s)", what)
	} else if period := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second; period < preStop+grace+drainMargin {
		t.Errorf("%s: terminationGracePeriodSeconds %v < preStop %v + -grace %v + %v: kubelet would kill hopwatch mid-drain", what, period, preStop, grace, drainMargin)
	}

	// The configuration: a ConfigMap mounted as a directory (a subPath
	// mount is never updated, so hot reload would never see a change),
	// holding a file hopwatch accepts (proxy -check).
	var mount *corev1.VolumeMount
	for i := range c.VolumeMounts {
		if m := &c.VolumeMounts[i]; m.MountPath == path.Dir(cfgPath) {
			mount = m
		}
	}
	if mount == nil {
		t.Fatalf("%s: no volume mounted at %s, the directory of -config", what, path.Dir(cfgPath))
	}
	if mount.SubPath != "" || mount.SubPathExpr != "" {
		t.Errorf("%s: the config is mounted with subPath: Kubernetes never updates such a mount", what)
	}
	i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == mount.Name })
	if i < 0 || spec.Volumes[i].ConfigMap == nil {
		t.Fatalf("%s: volume %q is not a ConfigMap volume", what, mount.Name)
	}
	vol := spec.Volumes[i].ConfigMap
	if len(vol.Items) > 0 {
		t.Errorf("%s: ConfigMap volume %s lists items; mount it whole", what, vol.Name)
	}
	cm, ok := configMaps[vol.Name]
	if !ok {
		t.Fatalf("%s: ConfigMap %s is not rendered", what, vol.Name)
	}
	data, ok := cm.Data[path.Base(cfgPath)]
	if !ok {
		t.Fatalf("%s: ConfigMap %s has no key %s", what, cm.Name, path.Base(cfgPath))
	}
	file := filepath.Join(t.TempDir(), path.Base(cfgPath))
	if err := os.WriteFile(file, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file) // what proxy -check runs
	if err != nil {
		t.Fatalf("%s: ConfigMap %s fails proxy -check:\n%v", what, cm.Name, err)
	}

	// Probes on the admin server, which must be reachable from kubelet:
	// on the pod IP, not loopback.
	adminHost, adminPort, err := net.SplitHostPort(cfg.Admin.Address)
	if err != nil {
		t.Fatalf("%s: admin.address %q: %v", what, cfg.Admin.Address, err)
	}
	if ip := net.ParseIP(adminHost); adminHost == "localhost" || ip != nil && ip.IsLoopback() {
		t.Errorf("%s: admin.address %s is loopback: kubelet's probes and Prometheus cannot reach it", what, cfg.Admin.Address)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
		{"livenessProbe", c.LivenessProbe, "/healthz"},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s", what, p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s: %s path %q, want %s", what, p.name, p.probe.HTTPGet.Path, p.path)
		}
		if port := containerPort(c, p.probe.HTTPGet.Port); port != adminPort {
			t.Errorf("%s: %s on port %s (%q), want the admin port %s", what, p.name, p.probe.HTTPGet.Port.String(), port, adminPort)
		}
	}
	// Every listener reachable from outside the pod has a container port
	// (a Service's targetPort names it).
	for _, l := range cfg.Listeners {
		host, port, err := net.SplitHostPort(l.Address)
		if err != nil {
			t.Fatalf("%s: listener %s address %q: %v", what, l.Name, l.Address, err)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			continue // a sidecar's listeners, for its own pod only
		}
		n, _ := strconv.Atoi(port)
		if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return int(p.ContainerPort) == n }) {
			t.Errorf("%s: listener %s (%s) has no container port", what, l.Name, l.Address)
		}
	}
	return true
}

// containerPort resolves a probe's port (a number or a port name) to the
// number, as text ("" if the name is unknown).
func containerPort(c *corev1.Container, p intstr.IntOrString) string {
	if p.Type == intstr.Int {
		return strconv.Itoa(int(p.IntVal))
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return strconv.Itoa(int(cp.ContainerPort))
		}
	}
	return ""
}

// podsHavePort reports whether any hopwatch pod has p as a container port
// (by name or number), sidecars included.
func podsHavePort(pods []*corev1.PodTemplateSpec, p intstr.IntOrString) bool {
	for _, pod := range pods {
		for _, c := range slices.Concat(pod.Spec.Containers, pod.Spec.InitContainers) {
			for _, cp := range c.Ports {
				if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
					return true
				}
			}
		}
	}
	return false
}

// selects reports whether a non-empty label selector matches labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func orPod(container, pod *bool) bool {
	if container != nil {
		return *container
	}
	return pod != nil && *pod
}
