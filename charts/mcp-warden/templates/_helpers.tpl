{{/* The release's base name. */}}
{{- define "mcp-warden.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "mcp-warden" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-mcp-warden" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "mcp-warden.labels" -}}
app.kubernetes.io/name: mcp-warden
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of the controller pods. */}}
{{- define "mcp-warden.selectorLabels" -}}
app.kubernetes.io/name: mcp-warden
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "mcp-warden.serviceAccountName" -}}
{{- default (include "mcp-warden.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The controller image. */}}
{{- define "mcp-warden.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The sidecar image. */}}
{{- define "mcp-warden.sidecarImage" -}}
{{- printf "%s:%s" (default .Values.image.repository .Values.sidecar.repository) (default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.tag) -}}
{{- end -}}

{{- define "mcp-warden.webhookService" -}}
{{- printf "%s-webhook" (include "mcp-warden.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mcp-warden.tlsSecret" -}}
{{- printf "%s-webhook-tls" (include "mcp-warden.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Namespaces the webhooks never act in. */}}
{{- define "mcp-warden.excludedNamespaces" -}}
{{- $ns := list "kube-system" .Release.Namespace -}}
{{- range .Values.webhook.excludeNamespaces }}{{ $ns = append $ns . }}{{ end -}}
{{- toJson (uniq $ns) -}}
{{- end -}}
