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
