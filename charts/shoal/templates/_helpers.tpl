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

{{/* The image reference: [registry/]repository then @digest, else :tag (default: the chart's appVersion). */}}
{{- define "shoal.image" -}}
{{- $registry := ((.Values.global).imageRegistry) | default .Values.image.registry }}
{{- $repository := .Values.image.repository }}
{{- if $registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* imagePullSecrets of every pod: global.imagePullSecrets, then imagePullSecrets, without repeats. */}}
{{- define "shoal.imagePullSecrets" -}}
{{- $secrets := concat (((.Values.global).imagePullSecrets) | default list) (.Values.imagePullSecrets | default list) | uniq }}
{{- with $secrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A size in bytes from an integer or a string with a unit (4MiB, 50M, 512Ki, 1.5GiB); K, M, G, T are powers
of 1000 and Ki, Mi, Gi, Ti of 1024, as in Kubernetes quantities, with an optional trailing B.
Call with (dict "value" .Values.peer.config.chunkSize "key" "peer.config.chunkSize" "min" 0 "max" 0);
max 0 means no upper bound. Fails the render on a malformed size or one out of range.
*/}}
{{- define "shoal.bytes" -}}
{{- $value := .value }}
{{- $bytes := 0 }}
{{- if kindIs "string" $value }}
{{- $pattern := "^([0-9]+(?:[.][0-9]+)?)([kKMGT]i?)?B?$" }}
{{- if not (regexMatch $pattern $value) }}
{{- fail (printf "%s: %q is not a size (bytes, or a number with K, Ki, M, Mi, G, Gi, T, Ti, optionally followed by B)" .key $value) }}
{{- end }}
{{- $number := regexReplaceAll $pattern $value "${1}" }}
{{- $unit := regexReplaceAll $pattern $value "${2}" | upper }}
{{- $factors := dict "" 1 "K" 1000 "KI" 1024 "M" 1000000 "MI" 1048576 "G" 1000000000 "GI" 1073741824 "T" 1000000000000 "TI" 1099511627776 }}
{{- $bytes = mulf (float64 $number) (get $factors $unit) | floor | int64 }}
{{- else }}
{{- $bytes = int64 $value }}
{{- end }}
{{- if lt $bytes (int64 .min) }}
{{- fail (printf "%s: %v is %d bytes, below the minimum of %d" .key $value $bytes (int64 .min)) }}
{{- end }}
{{- if and (gt (int64 .max) 0) (gt $bytes (int64 .max)) }}
{{- fail (printf "%s: %v is %d bytes, above the maximum of %d" .key $value $bytes (int64 .max)) }}
{{- end }}
{{- $bytes }}
{{- end }}

{{/* SHOAL_LOG_FORMAT and SHOAL_LOG_LEVEL of a daemon; call with (dict "root" $ "level" .Values.peer.logLevel). */}}
{{- define "shoal.logEnv" -}}
- name: SHOAL_LOG_FORMAT
  value: {{ .root.Values.logFormat | quote }}
- name: SHOAL_LOG_LEVEL
  value: {{ .level | quote }}
{{- end }}

{{/*
The env of a peer daemon in this release (StatefulSet and node-local DaemonSet): the trackers, the data dir,
the zone, the transfer settings, logs and metrics, then peer.extraEnv. Call with (dict "root" $ "dataDir" "/data").
*/}}
{{- define "shoal.peer.env" -}}
{{- $v := .root.Values -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: SHOAL_LISTEN
  value: "0.0.0.0:{{ $v.peer.port }}"
- name: SHOAL_ADVERTISE
  value: "$(POD_IP):{{ $v.peer.port }}"
- name: SHOAL_TRACKER
  value: {{ include "shoal.tracker.address" .root | quote }}
# Also what `kubectl exec ... -- shoal get|put|ls` uses to find the control socket.
- name: SHOAL_DATA_DIR
  value: {{ .dataDir | quote }}
{{- with .control }}
- name: SHOAL_CONTROL
  value: {{ . | quote }}
{{- end }}
{{- if $v.peer.zone }}
- name: SHOAL_ZONE
  value: {{ $v.peer.zone | quote }}
{{- else if $v.peer.zoneFromNode }}
- name: SHOAL_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end }}
- name: SHOAL_CHUNK_SIZE
  value: {{ include "shoal.bytes" (dict "value" $v.peer.config.chunkSize "key" "peer.config.chunkSize" "min" 16384 "max" 16777216) | quote }}
- name: SHOAL_UPLOAD_LIMIT
  value: {{ include "shoal.bytes" (dict "value" $v.peer.config.uploadLimit "key" "peer.config.uploadLimit" "min" 0 "max" 0) | quote }}
- name: SHOAL_DOWNLOAD_LIMIT
  value: {{ include "shoal.bytes" (dict "value" $v.peer.config.downloadLimit "key" "peer.config.downloadLimit" "min" 0 "max" 0) | quote }}
- name: SHOAL_UPLOAD_SLOTS
  value: {{ int64 $v.peer.config.uploadSlots | quote }}
- name: SHOAL_MAX_PEERS
  value: {{ int64 $v.peer.config.maxPeers | quote }}
- name: SHOAL_REQUESTS_PER_PEER
  value: {{ int64 $v.peer.config.requestsPerPeer | quote }}
{{ include "shoal.logEnv" (dict "root" .root "level" $v.peer.logLevel) }}
{{- if $v.metrics.enabled }}
- name: SHOAL_METRICS_PORT
  value: {{ int $v.peer.metricsPort | quote }}
{{- end }}
{{- with (include "shoal.tls.env" (dict "root" .root "healthPort" $v.peer.healthPort) | trim) }}
{{ . }}
{{- end }}
{{- with $v.peer.extraEnv }}
{{ toYaml . }}
{{- end }}
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

{{/*
A peer's lifecycle: with tests.enabled, a postStart hook publishes the release's canary (a small file whose bytes
follow from the release name, under the name shoal-canary-<release>) that `helm test` fetches from the release's
peers; then the preStop sleep. The hook never fails the container. Call with (dict "root" $ "path" "/data/...").
*/}}
{{- define "shoal.peer.lifecycle" -}}
{{- $root := .root }}
{{- $canary := $root.Values.tests.enabled }}
{{- $sleep := int $root.Values.peer.preStopSleepSeconds }}
{{- if or $canary (gt $sleep 0) }}
lifecycle:
  {{- if $canary }}
  postStart:
    exec:
      command:
        - /bin/sh
        - -c
        - |
          for i in $(seq 1 60); do shoal status >/dev/null 2>&1 && break; sleep 1; done
          yes {{ include "shoal.canary.name" $root | quote }} | head -c 1048576 > {{ .path }}.tmp && mv {{ .path }}.tmp {{ .path }}
          shoal put --name {{ include "shoal.canary.name" $root }} {{ .path }} >/dev/null 2>&1 || true
  {{- end }}
  {{- if gt $sleep 0 }}
  preStop:
    exec:
      command: ["sleep", "{{ $sleep }}"]
  {{- end }}
{{- end }}
{{- end }}

{{/* The name the release's peers publish their canary under (`helm test` searches for it). */}}
{{- define "shoal.canary.name" -}}
{{- printf "shoal-canary-%s" .Release.Name }}
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
{{- define "shoal.nodePeer.fullname" -}}
{{- printf "%s-node-peer" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The node-local peer's directory on each node: one per release, so two releases never share a store. */}}
{{- define "shoal.nodePeer.hostDir" -}}
{{- printf "%s/%s-%s" (trimSuffix "/" .Values.peer.nodeLocal.hostPath) .Release.Namespace .Release.Name }}
{{- end }}

{{/* Where a daemon finds its TLS files: the Secret's keys as cert-manager and kubernetes.io/tls name them. */}}
{{- define "shoal.tls.mountPath" -}}
/etc/shoal/tls
{{- end }}

{{/* The Secret with a role's certificate: tls.existingSecret, else <fullname>-<role>-tls. Call with (dict "root" $ "role" "peer"). */}}
{{- define "shoal.tls.secretName" -}}
{{- if .root.Values.tls.existingSecret }}
{{- .root.Values.tls.existingSecret }}
{{- else }}
{{- printf "%s-%s-tls" (include "shoal.fullname" .root) .role | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
A daemon's TLS and probe env when tls.enabled: the three files and the plaintext health-only listener on the pod
IP (needs POD_IP defined before it). Call with (dict "root" $ "healthPort" .Values.peer.healthPort).
*/}}
{{- define "shoal.tls.env" -}}
{{- if .root.Values.tls.enabled }}
- name: SHOAL_TLS_CERT
  value: {{ printf "%s/tls.crt" (include "shoal.tls.mountPath" .root) | quote }}
- name: SHOAL_TLS_KEY
  value: {{ printf "%s/tls.key" (include "shoal.tls.mountPath" .root) | quote }}
- name: SHOAL_TLS_CA
  value: {{ printf "%s/ca.crt" (include "shoal.tls.mountPath" .root) | quote }}
- name: SHOAL_HEALTH_LISTEN
  value: "$(POD_IP):{{ .healthPort }}"
{{- end }}
{{- end }}

{{/* The TLS volume mount of a daemon container (empty without TLS). */}}
{{- define "shoal.tls.volumeMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "shoal.tls.mountPath" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The TLS volume of a pod (no subPath anywhere, so a renewed Secret reaches the files). Call with (dict "root" $ "role" "peer"). */}}
{{- define "shoal.tls.volume" -}}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "shoal.tls.secretName" . }}
    # Readable by the daemon's group (fsGroup) only.
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* The port the probes ask: the plaintext health-only port with TLS, else the gRPC port. Call with (dict "root" $ "port" P "healthPort" H). */}}
{{- define "shoal.probePort" -}}
{{- if .root.Values.tls.enabled }}{{ .healthPort }}{{ else }}{{ .port }}{{ end }}
{{- end }}
