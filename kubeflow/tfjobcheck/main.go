// Command tfjobcheck checks a TFJob manifest with the Kubeflow Training Operator's own code, offline,
// taking it through what the API server and the operator do with it on `kubectl create`.
//
//  1. The API server, with the operator's CRD (manifests/base/crds/kubeflow.org_tfjobs.yaml of the
//     release pinned in go.mod, embedded at build time): it prunes fields the schema does not know
//     (the server drops them silently; `kubectl apply`'s strict field validation refuses them, and so
//     does this check), applies the schema's defaults, and validates the object as the CRD's REST
//     strategy does (metadata, OpenAPI schema, list types, CEL rules).
//  2. The operator's validating admission webhook (pkg/webhooks/tensorflow, ValidateCreate).
//  3. The operator's Go type: the manifest must decode strictly (unknown or duplicate fields are errors).
//  4. The operator's controller: its defaulting (the scheme's SetDefaults_TFJob, as the reconciler
//     applies it) and the TF_CONFIG it gives each replica's pod (TFJobReconciler.SetClusterSpec).
//
// Every problem found is printed to stderr and the exit status is 1; a manifest that passes prints a
// JSON report on stdout: the defaulted TFJob and, per pod, its name and TF_CONFIG.
//
// Usage: tfjob-check FILE.yaml|FILE.json|-
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/go-logr/logr"
	kubeflowv1 "github.com/kubeflow/training-operator/pkg/apis/kubeflow.org/v1"
	"github.com/kubeflow/training-operator/pkg/controller.v1/common"
	"github.com/kubeflow/training-operator/pkg/controller.v1/tensorflow"
	tfwebhook "github.com/kubeflow/training-operator/pkg/webhooks/tensorflow"
	corev1 "k8s.io/api/core/v1"
	apiextensionsinternal "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	schemaobjectmeta "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/objectmeta"
	structuralpruning "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apiextensions-apiserver/pkg/registry/customresource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured/unstructuredscheme"
	"k8s.io/apimachinery/pkg/runtime"
	serializerjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"
)

// crdYAML is the operator's CRD, copied from the module cache by `go generate` (the Makefile runs it).
//
//go:generate sh -c "cp \"$(go list -m -f '{{.Dir}}' github.com/kubeflow/training-operator)/manifests/base/crds/kubeflow.org_tfjobs.yaml\" crd.yaml && chmod u+w crd.yaml"
//go:embed crd.yaml
var crdYAML []byte

// defaultNamespace stands in for the namespace `kubectl create` takes from the current context when
// the manifest names none; the API server then sets it from the request URL before validation.
const defaultNamespace = "default"

type podReport struct {
	Name     string          `json:"name"`
	Type     string          `json:"type"`
	Index    int             `json:"index"`
	TFConfig json.RawMessage `json:"tfConfig,omitempty"`
}

type report struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	CRD       string            `json:"crd"`
	Replicas  map[string]int32  `json:"replicas"`
	Pods      []podReport       `json:"pods"`
	Defaulted *kubeflowv1.TFJob `json:"defaulted"`
}

// problems collects every error found, so one run names them all.
type problems []string

func (p *problems) add(stage string, err error) {
	if err != nil {
		*p = append(*p, stage+": "+err.Error())
	}
}

func (p *problems) addFields(stage string, errs field.ErrorList) {
	for _, err := range errs {
		p.add(stage, err)
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: tfjob-check FILE.yaml|FILE.json|-")
		os.Exit(2)
	}
	// The webhook logs through controller-runtime, which warns on stderr when no logger is set.
	ctrllog.SetLogger(logr.Discard())
	raw, err := read(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	rep, found, err := check(raw)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if len(found) > 0 {
		fmt.Fprintf(os.Stderr, "%s: %d problem(s):\n", os.Args[1], len(found))
		for _, problem := range found {
			fmt.Fprintln(os.Stderr, "  "+problem)
		}
		os.Exit(1)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", "  ")
	if err := out.Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}

func read(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(path)
}

// check runs every stage it can and returns the report with the problems found; err is for a
// manifest that is not a TFJob object at all, or a CRD that cannot be loaded.
func check(raw []byte) (*report, problems, error) {
	var found problems
	data, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("not a YAML or JSON object: %w", err)
	}
	crd, strategy, structural, err := loadCRD()
	if err != nil {
		return nil, nil, err
	}

	// 1. The API server.
	object := map[string]interface{}{}
	if err := utiljson.Unmarshal(data, &object); err != nil {
		return nil, nil, fmt.Errorf("not a JSON object: %w", err)
	}
	u := &unstructured.Unstructured{Object: object}
	if u.GetAPIVersion() != kubeflowv1.GroupVersion.String() || u.GetKind() != kubeflowv1.TFJobKind {
		return nil, nil, fmt.Errorf("apiVersion/kind is %q/%q, not %s/%s", u.GetAPIVersion(), u.GetKind(),
			kubeflowv1.GroupVersion.String(), kubeflowv1.TFJobKind)
	}
	if u.GetNamespace() == "" {
		u.SetNamespace(defaultNamespace)
	}
	// As the API server's schema coercer (customresource_handler.go): metadata first, then pruning
	// with the paths of what it drops, then the schema's defaults.
	for _, path := range coerce(u, structural, &found) {
		found = append(found, fmt.Sprintf("API server: unknown field %q: the server drops it (kubectl apply --validate=strict refuses it)", path))
	}
	structuraldefaulting.Default(u.Object, structural)
	ctx := context.Background()
	strategy.PrepareForCreate(ctx, u)
	found.addFields("API server (CRD "+crd.Name+")", strategy.Validate(ctx, u))

	// 2 and 3. The operator's Go type, strictly, then its admission webhook on what the server admits.
	job := &kubeflowv1.TFJob{}
	found.add("TFJob Go type", decodeStrict(data, job))
	admitted := &kubeflowv1.TFJob{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, admitted); err != nil {
		found.add("TFJob Go type", err)
		return nil, found, nil
	}
	_, err = (&tfwebhook.Webhook{}).ValidateCreate(ctx, admitted)
	var aggregate utilerrors.Aggregate
	if errors.As(err, &aggregate) {
		messages := []string{}
		for _, e := range aggregate.Errors() {
			messages = append(messages, e.Error())
		}
		sort.Strings(messages) // the webhook walks a map
		for _, message := range messages {
			found.add("admission webhook", errors.New(message))
		}
	} else {
		found.add("admission webhook", err)
	}
	if len(found) > 0 {
		return nil, found, nil
	}

	// 4. The controller's defaulting and the TF_CONFIG of every pod.
	scheme := runtime.NewScheme()
	if err := kubeflowv1.AddToScheme(scheme); err != nil {
		return nil, nil, err
	}
	scheme.Default(admitted)
	rep := &report{Name: admitted.Name, Namespace: admitted.Namespace, CRD: crd.Name,
		Replicas: map[string]int32{}, Pods: []podReport{}, Defaulted: admitted}
	pods, err := clusterSpecs(admitted)
	found.add("controller", err)
	rep.Pods = pods
	for rtype, spec := range admitted.Spec.TFReplicaSpecs {
		rep.Replicas[string(rtype)] = *spec.Replicas
	}
	return rep, found, nil
}

// loadCRD builds what the API server serves the TFJob resource with: the structural schema, the
// OpenAPI validator and the custom resource REST strategy.
// restStrategy is the part of the CRD's REST strategy (customresource.NewStrategy) a create goes through.
type restStrategy interface {
	PrepareForCreate(ctx context.Context, obj runtime.Object)
	Validate(ctx context.Context, obj runtime.Object) field.ErrorList
}

func loadCRD() (*apiextensionsv1.CustomResourceDefinition, restStrategy, *structuralschema.Structural, error) {
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(crdYAML, crd); err != nil {
		return nil, nil, nil, fmt.Errorf("embedded CRD: %w", err)
	}
	var version *apiextensionsv1.CustomResourceDefinitionVersion
	for i := range crd.Spec.Versions {
		if crd.Spec.Versions[i].Name == kubeflowv1.GroupVersion.Version {
			version = &crd.Spec.Versions[i]
		}
	}
	if version == nil || version.Schema == nil {
		return nil, nil, nil, fmt.Errorf("embedded CRD %s has no schema for %s", crd.Name, kubeflowv1.GroupVersion.Version)
	}
	internal := &apiextensionsinternal.CustomResourceValidation{}
	if err := apiextensionsv1.Convert_v1_CustomResourceValidation_To_apiextensions_CustomResourceValidation(version.Schema, internal, nil); err != nil {
		return nil, nil, nil, err
	}
	structural, err := structuralschema.NewStructural(internal.OpenAPIV3Schema)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("embedded CRD schema is not structural: %w", err)
	}
	validator, _, err := apiservervalidation.NewSchemaValidator(internal.OpenAPIV3Schema)
	if err != nil {
		return nil, nil, nil, err
	}
	var status *apiextensionsinternal.CustomResourceSubresourceStatus
	var statusValidator apiservervalidation.SchemaValidator
	if version.Subresources != nil && version.Subresources.Status != nil {
		status = &apiextensionsinternal.CustomResourceSubresourceStatus{}
		statusSchema := internal.OpenAPIV3Schema.Properties["status"]
		if statusValidator, _, err = apiservervalidation.NewSchemaValidator(&statusSchema); err != nil {
			return nil, nil, nil, err
		}
	}
	gvk := kubeflowv1.GroupVersion.WithKind(crd.Spec.Names.Kind)
	strategy := customresource.NewStrategy(unstructuredscheme.NewUnstructuredObjectTyper(),
		crd.Spec.Scope == apiextensionsv1.NamespaceScoped, gvk, validator, statusValidator, structural, status, nil)
	return crd, strategy, structural, nil
}

// coerce does what the API server's schema coercer does to a new object, returning the paths of
// the fields it prunes.
func coerce(u *unstructured.Unstructured, structural *structuralschema.Structural, found *problems) []string {
	apiVersion, kind := u.GetAPIVersion(), u.GetKind()
	meta, hasMeta, unknown, err := schemaobjectmeta.GetObjectMetaWithOptions(u.Object, schemaobjectmeta.ObjectMetaOptions{ReturnUnknownFieldPaths: true})
	found.add("API server: metadata", err)
	unknown = append(unknown, structuralpruning.PruneWithOptions(u.Object, structural, true,
		structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})...)
	structuraldefaulting.PruneNonNullableNullsWithoutDefaults(u.Object, structural)
	fieldErr, paths := schemaobjectmeta.CoerceWithOptions(nil, u.Object, structural, false, schemaobjectmeta.CoerceOptions{ReturnUnknownFieldPaths: true})
	if fieldErr != nil {
		found.add("API server: metadata", fieldErr)
	}
	unknown = append(unknown, paths...)
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	if hasMeta && meta != nil {
		found.add("API server: metadata", schemaobjectmeta.SetObjectMeta(u.Object, meta))
	}
	sort.Strings(unknown)
	return unknown
}

// decodeStrict decodes as apimachinery's strict JSON serializer does: unknown and duplicate fields
// are errors, named with their paths.
func decodeStrict(data []byte, job *kubeflowv1.TFJob) error {
	scheme := runtime.NewScheme()
	if err := kubeflowv1.AddToScheme(scheme); err != nil {
		return err
	}
	serializer := serializerjson.NewSerializerWithOptions(serializerjson.DefaultMetaFactory, scheme, scheme,
		serializerjson.SerializerOptions{Strict: true})
	_, _, err := serializer.Decode(data, nil, job)
	if strict, ok := runtime.AsStrictDecodingError(err); ok {
		messages := []string{}
		for _, e := range strict.Errors() {
			messages = append(messages, e.Error())
		}
		return errors.New(strings.Join(messages, "; "))
	}
	return err
}

// clusterSpecs lists every pod the controller creates, with the TF_CONFIG it sets on it: the
// controller's own SetClusterSpec on a copy of the replica's template, named as createNewPod names it.
func clusterSpecs(job *kubeflowv1.TFJob) ([]podReport, error) {
	reconciler := &tensorflow.TFJobReconciler{}
	types := make([]string, 0, len(job.Spec.TFReplicaSpecs))
	for rtype := range job.Spec.TFReplicaSpecs {
		types = append(types, string(rtype))
	}
	sort.Strings(types)
	pods := []podReport{}
	for _, rtype := range types {
		spec := job.Spec.TFReplicaSpecs[kubeflowv1.ReplicaType(rtype)]
		rt := strings.ToLower(rtype)
		for i := 0; i < int(*spec.Replicas); i++ {
			template := spec.Template.DeepCopy()
			if err := reconciler.SetClusterSpec(job, template, rt, strconv.Itoa(i)); err != nil {
				return nil, err
			}
			pod := podReport{Name: common.GenGeneralName(job.Name, rt, strconv.Itoa(i)), Type: rt, Index: i}
			pod.TFConfig = tfConfig(template)
			pods = append(pods, pod)
		}
	}
	return pods, nil
}

func tfConfig(template *corev1.PodTemplateSpec) json.RawMessage {
	for _, container := range template.Spec.Containers {
		if container.Name != kubeflowv1.TFJobDefaultContainerName {
			continue
		}
		for _, env := range container.Env {
			if env.Name == "TF_CONFIG" {
				return json.RawMessage(env.Value)
			}
		}
	}
	return nil
}
