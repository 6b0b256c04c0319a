{{/* Chart name, truncated to 63 characters (a label value). */}}
{{- define "dynamics-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, unless it already contains the chart name. */}}
{{- define "dynamics-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dynamics-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dynamics-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "dynamics-operator.labels" -}}
{{ include "dynamics-operator.selectorLabels" . }}
app.kubernetes.io/part-of: dynamics-operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "dynamics-operator.serviceAccountName" -}}
{{- default (include "dynamics-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "dynamics-operator.secretName" -}}
{{- if .Values.apiSecret.existingSecret -}}
{{- .Values.apiSecret.existingSecret -}}
{{- else if .Values.apiSecret.create -}}
{{- printf "%s-api" (include "dynamics-operator.fullname" .) -}}
{{- else -}}
bithuman-api
{{- end -}}
{{- end -}}

{{- define "dynamics-operator.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{- define "dynamics-operator.leaseName" -}}
{{- default (include "dynamics-operator.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- define "dynamics-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* What the operator may do on AgentDynamics and Events (the kustomize base's ClusterRole); Secrets are granted per namespace (rbac.yaml). */}}
{{- define "dynamics-operator.rules" -}}
- apiGroups: ["dynamics.bithuman.ai"]
  resources: ["agentdynamics"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["dynamics.bithuman.ai"]
  resources: ["agentdynamics/status"]
  verbs: ["update"]
{{- if eq .Values.watchNamespace "" }}
- apiGroups: ["dynamics.bithuman.ai"]
  resources: ["dynamicsledgers"]
  verbs: ["get", "list", "watch", "create", "update"]
{{- end }}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* Non-empty when a CA bundle is configured (caBundle.configMap or caBundle.secret). */}}
{{- define "dynamics-operator.caBundleSource" -}}
{{- or .Values.caBundle.configMap .Values.caBundle.secret -}}
{{- end -}}

{{/* The namespaces whose Secrets the operator reads, as JSON: ["*"] for every namespace. With
watchNamespace only that one (objects live nowhere else); else the release namespace and those
listed in secretNamespaces. */}}
{{- define "dynamics-operator.secretNamespaces" -}}
{{- if .Values.watchNamespace -}}
{{- list .Values.watchNamespace | toJson -}}
{{- else if has "*" .Values.secretNamespaces -}}
{{- list "*" | toJson -}}
{{- else -}}
{{- prepend .Values.secretNamespaces .Release.Namespace | uniq | toJson -}}
{{- end -}}
{{- end -}}
