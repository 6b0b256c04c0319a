// Command kstatus prints the kstatus result (sigs.k8s.io/cli-utils/pkg/kstatus, the library
// behind `kubectl wait`-style readiness in kpt, Config Sync and Flux) for each object in the YAML
// or JSON files named on the command line, one JSON line per object:
//
//	{"file":"...","name":"ns/name","status":"Current","message":"..."}
//
// tests/health_engines.rs feeds it AgentDynamics objects read from a real API server.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type result struct {
	File    string `json:"file"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kstatus FILE...")
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, file := range os.Args[1:] {
		data, err := os.ReadFile(file)
		if err != nil {
			fail(err)
		}
		// As the API machinery reads objects: integers stay int64.
		js, err := yaml.YAMLToJSON(data)
		if err != nil {
			fail(fmt.Errorf("%s: %w", file, err))
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			fail(fmt.Errorf("%s: %w", file, err))
		}
		res, err := status.Compute(u)
		if err != nil {
			fail(fmt.Errorf("%s: %w", file, err))
		}
		if err := enc.Encode(result{
			File:    file,
			Name:    u.GetNamespace() + "/" + u.GetName(),
			Status:  res.Status.String(),
			Message: res.Message,
		}); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(1)
}
