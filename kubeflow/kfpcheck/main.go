// Command kfpcheck runs open-source Kubeflow Pipelines' own run-creation compile on a PipelineSpec,
// offline, and reports what the resulting Argo Workflow would run.
//
// It runs the code of the KFP release pinned in go.mod that the API server runs when a run is
// created (backend/src/apiserver/template/v2_template.go: NewV2SpecTemplate on upload, then
// V2Spec.RunWorkflow, which builds the PipelineJob and calls argocompiler.Compile). A spec the
// backend cannot run (for example one with a `resolver` executor) fails here with the API
// server's message and a non-zero exit. The Workflow it compiles then goes through Argo's own
// validation (workflow/validate, the Argo release KFP pins), which Argo's controller runs before it
// starts a workflow: a task name Argo refuses (it allows no `_`) fails here too.
//
// Usage: kfpcheck [-pipeline-root URI] pipeline.yaml > report.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"

	wfapi "github.com/argoproj/argo-workflows/v3/pkg/apis/workflow/v1alpha1"
	"github.com/argoproj/argo-workflows/v3/workflow/validate"
	"github.com/kubeflow/pipelines/api/v2alpha1/go/pipelinespec"
	"github.com/kubeflow/pipelines/backend/src/apiserver/model"
	"github.com/kubeflow/pipelines/backend/src/apiserver/template"
	"github.com/kubeflow/pipelines/backend/src/common/util"
	"google.golang.org/protobuf/encoding/protojson"
)

// clusterDefaultRoot is what the root DAG driver falls back to when a run names no pipeline root
// and the kfp-launcher ConfigMap has no defaultPipelineRoot (backend/src/v2/config/env.go).
const clusterDefaultRoot = "minio://mlpipeline/v2/artifacts"

type report struct {
	Pipeline           string         `json:"pipeline"`
	PipelineRoot       string         `json:"pipelineRoot"`
	PipelineRootSource string         `json:"pipelineRootSource"`
	Templates          []templateInfo `json:"templates"`
	Tasks              []taskInfo     `json:"tasks"`
}

type templateInfo struct {
	Name   string   `json:"name"`
	Kind   string   `json:"kind"`
	Images []string `json:"images,omitempty"`
}

type taskInfo struct {
	Name      string            `json:"name"`
	DAG       string            `json:"dag"`
	Executor  string            `json:"executor"`
	Images    []string          `json:"images,omitempty"`
	Command   []string          `json:"command,omitempty"`
	Resources json.RawMessage   `json:"resources,omitempty"`
	Limits    map[string]string `json:"limits,omitempty"`
	Requests  map[string]string `json:"requests,omitempty"`
}

func main() {
	root := flag.String("pipeline-root", "", "the run's pipeline root (runtimeConfig.gcsOutputDirectory); empty: the cluster default")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: kfpcheck [-pipeline-root URI] pipeline.yaml")
		os.Exit(2)
	}
	wf, name, err := compile(flag.Arg(0), *root)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := validate.ValidateWorkflow(nil, nil, wf, validate.ValidateOpts{}); err != nil {
		fmt.Fprintln(os.Stderr, "Argo workflow validation:", err)
		os.Exit(1)
	}
	rep, err := describe(wf, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", "  ")
	if err := out.Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// compile runs the API server's own code for an uploaded spec and a new run: NewV2SpecTemplate
// validates the upload, RunWorkflow builds the PipelineJob (the run's pipeline root becomes
// runtimeConfig.gcsOutputDirectory) and calls argocompiler.Compile(job, kubernetesSpec, nil).
func compile(path, pipelineRoot string) (*wfapi.Workflow, string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	tmpl, err := template.NewV2SpecTemplate(raw)
	if err != nil {
		return nil, "", fmt.Errorf("Failed to upload pipeline: %w", err)
	}
	run := &model.Run{DisplayName: "kfpcheck"}
	run.PipelineSpec.RuntimeConfig.PipelineRoot = pipelineRoot
	spec, err := tmpl.RunWorkflow(run, template.RunWorkflowOptions{RunId: "kfpcheck-run"})
	if err != nil {
		return nil, "", err
	}
	wf, ok := spec.(*util.Workflow)
	if !ok {
		return nil, "", fmt.Errorf("unexpected execution spec %T", spec)
	}
	return wf.Workflow, tmpl.V2PipelineName(), nil
}

// describe reads the images, resources and pipeline root back out of the compiled workflow: the
// compiler stores each executor's container spec as JSON in a workflow annotation
// ("pipelines.kubeflow.org/implementations-<component>"; later releases use a workflow parameter)
// that the container-driver task receives as its "container" input.
func describe(wf *wfapi.Workflow, name string) (*report, error) {
	globals := map[string]string{}
	for key, value := range wf.Annotations {
		globals["{{workflow.annotations."+key+"}}"] = value
	}
	for _, p := range wf.Spec.Arguments.Parameters {
		globals["{{workflow.parameters."+p.Name+"}}"] = p.Value.String()
	}
	rep := &report{Pipeline: name, Templates: []templateInfo{}, Tasks: []taskInfo{}}
	rootSet := false
	for _, t := range wf.Spec.Templates {
		rep.Templates = append(rep.Templates, describeTemplate(t))
		if t.DAG == nil {
			continue
		}
		for _, task := range t.DAG.Tasks {
			params := map[string]string{}
			for _, p := range task.Arguments.Parameters {
				if p.Value != nil {
					params[p.Name] = p.Value.String()
				}
			}
			if cfg, ok := params["runtime-config"]; ok {
				root, err := runtimeRoot(cfg)
				if err != nil {
					return nil, err
				}
				rep.PipelineRoot, rootSet = root, true
			}
			info, ok, err := describeTask(t.Name, task.Name, params, globals)
			if err != nil {
				return nil, err
			}
			if ok {
				rep.Tasks = append(rep.Tasks, info)
			}
		}
	}
	if !rootSet {
		return nil, fmt.Errorf("no root driver task with a runtime-config in the workflow")
	}
	rep.PipelineRootSource = "runtimeConfig.gcsOutputDirectory"
	if rep.PipelineRoot == "" {
		rep.PipelineRoot = clusterDefaultRoot
		rep.PipelineRootSource = "kfp-launcher ConfigMap defaultPipelineRoot, else " + clusterDefaultRoot
	}
	sort.Slice(rep.Tasks, func(i, j int) bool { return rep.Tasks[i].Name < rep.Tasks[j].Name })
	return rep, nil
}

// describeTemplate names what an Argo template runs: a DAG, or a container whose command says
// whether it is the driver, the launcher-wrapped user container, or the importer.
func describeTemplate(t wfapi.Template) templateInfo {
	info := templateInfo{Name: t.Name, Kind: "other"}
	switch {
	case t.DAG != nil:
		info.Kind = "dag"
	case t.Container != nil:
		info.Kind = "container"
		for _, c := range t.InitContainers {
			info.Images = append(info.Images, c.Image)
		}
		info.Images = append(info.Images, t.Container.Image)
		if len(t.InitContainers) > 0 {
			// The launcher copies itself in first; the user image and command arrive at run time
			// in the driver's pod-spec patch, replacing the placeholder main container.
			info.Kind = "executor (launcher + user container)"
		}
		command := append(append([]string{}, t.Container.Command...), t.Container.Args...)
		for i, arg := range command {
			if arg == "--type" {
				info.Kind = "driver"
			}
			if arg == "--executor_type" && i+1 < len(command) {
				info.Kind = command[i+1]
			}
		}
	}
	return info
}

// describeTask reports one pipeline task, found through its driver (container) or importer call.
func describeTask(dag, argoTask string, params, globals map[string]string) (taskInfo, bool, error) {
	// The "task" input is the PipelineTaskSpec JSON; its taskInfo names the pipeline task.
	taskName := argoTask
	if taskJSON, ok := params["task"]; ok {
		task := &pipelinespec.PipelineTaskSpec{}
		if err := protojson.Unmarshal([]byte(taskJSON), task); err != nil {
			return taskInfo{}, false, fmt.Errorf("task %q: %w", argoTask, err)
		}
		taskName = task.GetTaskInfo().GetName()
	}
	if impl, ok := params["container"]; ok {
		specJSON, ok := globals[impl]
		if !ok {
			return taskInfo{}, false, fmt.Errorf("task %q: container spec %q is not in the workflow", taskName, impl)
		}
		container := &pipelinespec.PipelineDeploymentConfig_PipelineContainerSpec{}
		if err := protojson.Unmarshal([]byte(specJSON), container); err != nil {
			return taskInfo{}, false, fmt.Errorf("task %q: %w", taskName, err)
		}
		// The launcher runs command + args itself, so the image's ENTRYPOINT never applies.
		info := taskInfo{Name: taskName, DAG: dag, Executor: "container", Images: []string{container.GetImage()},
			Command: container.GetCommand()}
		if res := container.GetResources(); res != nil {
			raw, err := protojson.Marshal(res)
			if err != nil {
				return taskInfo{}, false, err
			}
			info.Resources = raw
			info.Limits, info.Requests = podResources(res)
		}
		return info, true, nil
	}
	if _, ok := params["importer"]; ok {
		return taskInfo{Name: taskName, DAG: dag, Executor: "importer"}, true, nil
	}
	return taskInfo{}, false, nil
}

// podResources is what the container driver puts into the pod (initPodSpecPatch in
// backend/src/v2/driver/driver.go, unexported): cpu as given, memory in gigabytes ("%vG"), and an
// accelerator as a limit only. Kubernetes then requests the limit wherever no request is set.
func podResources(res *pipelinespec.PipelineDeploymentConfig_PipelineContainerSpec_ResourceSpec) (map[string]string, map[string]string) {
	limits, requests := map[string]string{}, map[string]string{}
	set := func(dst map[string]string, key string, n float64, format string) {
		if n != 0 {
			dst[key] = fmt.Sprintf(format, n)
		}
	}
	set(limits, "cpu", res.GetCpuLimit(), "%v")
	set(limits, "memory", res.GetMemoryLimit(), "%vG")
	set(requests, "cpu", res.GetCpuRequest(), "%v")
	set(requests, "memory", res.GetMemoryRequest(), "%vG")
	if acc := res.GetAccelerator(); acc != nil && acc.GetType() != "" && acc.GetCount() > 0 {
		limits[acc.GetType()] = fmt.Sprint(acc.GetCount())
	}
	return limits, requests
}

// runtimeRoot reads the pipeline root out of the root driver's runtime-config JSON.
func runtimeRoot(cfg string) (string, error) {
	rc := &pipelinespec.PipelineJob_RuntimeConfig{}
	if err := protojson.Unmarshal([]byte(cfg), rc); err != nil {
		return "", fmt.Errorf("runtime-config: %w", err)
	}
	return rc.GetGcsOutputDirectory(), nil
}
