// Command argocd-lua runs an Argo CD resource health check the way Argo CD runs one: with
// gopher-lua (github.com/yuin/gopher-lua), only the package, base and table libraries and an os
// library reduced to time and date, the object as the global `obj` (converted as Argo CD's
// decodeValue converts it) and a one second limit. It runs every case of an Argo CD
// health_test.yaml and prints one JSON line per case:
//
//	{"inputPath":"testdata/x.yaml","want":{...},"got":{...},"ok":true}
//
// and exits 1 if any case differs.
//
//	argocd-lua HEALTH_LUA HEALTH_TEST_YAML
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type testFile struct {
	Tests []struct {
		HealthStatus health `json:"healthStatus"`
		InputPath    string `json:"inputPath"`
	} `json:"tests"`
}

type caseResult struct {
	InputPath string `json:"inputPath"`
	Want      health `json:"want"`
	Got       health `json:"got"`
	Error     string `json:"error,omitempty"`
	OK        bool   `json:"ok"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua HEALTH_LUA HEALTH_TEST_YAML")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail(err)
	}
	var tests testFile
	if err := readYAML(os.Args[2], &tests); err != nil {
		fail(err)
	}
	if len(tests.Tests) == 0 {
		fail(fmt.Errorf("%s has no tests", os.Args[2]))
	}
	dir := filepath.Dir(os.Args[2])
	enc := json.NewEncoder(os.Stdout)
	failed := 0
	for _, tc := range tests.Tests {
		r := caseResult{InputPath: tc.InputPath, Want: tc.HealthStatus}
		var obj map[string]interface{}
		if err := readYAML(filepath.Join(dir, tc.InputPath), &obj); err != nil {
			r.Error = err.Error()
		} else if got, err := runHealth(string(script), obj); err != nil {
			r.Error = err.Error()
		} else {
			r.Got = got
			r.OK = got == tc.HealthStatus
		}
		if !r.OK {
			failed++
		}
		if err := enc.Encode(r); err != nil {
			fail(err)
		}
	}
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "argocd-lua: %d of %d cases failed\n", failed, len(tests.Tests))
		os.Exit(1)
	}
}

func readYAML(path string, into interface{}) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// runHealth mirrors Argo CD's util/lua VM.runLua + getHealthStatus.
func runHealth(script string, obj map[string]interface{}) (health, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return health{}, err
		}
	}
	l.PreloadModule(lua.OsLibName, safeOsLoader)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return health{}, err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return health{}, fmt.Errorf("the script returned %s, not a table", l.Get(-1).Type())
	}
	return health{
		Status:  lua.LVAsString(ret.RawGetString("status")),
		Message: lua.LVAsString(ret.RawGetString("message")),
	}, nil
}

// Argo CD's safe os library: only time and date.
func safeOsLoader(l *lua.LState) int {
	full := l.NewTable()
	l.Push(l.NewFunction(lua.OpenOs))
	l.Call(0, 1)
	if t, ok := l.Get(-1).(*lua.LTable); ok {
		full = t
	}
	l.Pop(1)
	safe := l.NewTable()
	safe.RawSetString("time", full.RawGetString("time"))
	safe.RawSetString("date", full.RawGetString("date"))
	l.Push(safe)
	return 1
}

func openSafeOs(l *lua.LState) int {
	safeOsLoader(l)
	safe := l.Get(-1)
	l.SetGlobal(lua.OsLibName, safe)
	return 1
}

func decodeValue(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case []interface{}:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]interface{}:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "argocd-lua:", err)
	os.Exit(1)
}
