{{/* Chart name, overridable with nameOverride. */}}
{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name, the prefix of every object (63 chars max for DNS labels). */}}
{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "shoal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "shoal.labels" -}}
helm.sh/chart: {{ include "shoal.chart" . }}
{{ include "shoal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shoal
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable across upgrades, so no chart or version here. */}}
{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Object names of each component. */}}
{{- define "shoal.tracker.fullname" -}}
{{- printf "%s-tracker" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "shoal.tracker.headless" -}}
{{- printf "%s-tracker-headless" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "shoal.peer.fullname" -}}
{{- printf "%s-peer" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "shoal.peer.headless" -}}
{{- printf "%s-peer-headless" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What peers dial: the headless Service's FQDN, which resolves to every ready tracker pod. */}}
{{- define "shoal.tracker.address" -}}
{{- printf "%s.%s.svc.%s:%d" (include "shoal.tracker.headless" .) .Release.Namespace .Values.clusterDomain (int .Values.tracker.port) }}
{{- end }}

{{/* The image reference; the tag defaults to the chart's appVersion. */}}
{{- define "shoal.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* ServiceAccount names. */}}
{{- define "shoal.tracker.serviceAccountName" -}}
{{- if .Values.tracker.serviceAccount.create }}
{{- default (include "shoal.tracker.fullname" .) .Values.tracker.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.tracker.serviceAccount.name }}
{{- end }}
{{- end }}
{{- define "shoal.peer.serviceAccountName" -}}
{{- if .Values.peer.serviceAccount.create }}
{{- default (include "shoal.peer.fullname" .) .Values.peer.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.peer.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
topologySpreadConstraints over nodes and zones for one component.
Call with (dict "root" $ "component" "tracker" "spread" .Values.tracker.topologySpread).
*/}}
{{- define "shoal.topologySpread" -}}
{{- $spread := .spread }}
{{- if $spread.enabled }}
{{- range $key, $when := dict "kubernetes.io/hostname" $spread.nodes "topology.kubernetes.io/zone" $spread.zones }}
{{- if $when }}
- maxSkew: {{ $spread.maxSkew }}
  topologyKey: {{ $key }}
  whenUnsatisfiable: {{ $when }}
  labelSelector:
    matchLabels:
      {{- include "shoal.selectorLabels" $.root | nindent 6 }}
      app.kubernetes.io/component: {{ $.component }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Native gRPC probe on the component's port; service "" is the process's overall health. */}}
{{- define "shoal.grpcProbe" -}}
grpc:
  port: {{ .port }}
{{- toYaml .probe | nindent 0 }}
{{- end }}

{{/* preStop hook: sleep so endpoints and DNS drop the pod before the daemon gets SIGTERM. */}}
{{- define "shoal.preStop" -}}
{{- if gt (int .) 0 }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ int . }}"]
{{- end }}
{{- end }}
