{{/*
Pod-level peers: a Shoal peer as a native sidecar of any workload pod (Kubernetes >= 1.29), sharing an emptyDir
with the app, and an init container that fetches a file into that emptyDir before the app starts. The sidecar
keeps serving the file to other pods until the pod ends, then leaves the trackers (SIGTERM). Usable from any
chart that has this one as a dependency; every setting is a parameter, so it needs none of this chart's values.
examples/sidecar/ shows them in a Deployment.

  initContainers:
    {{- include "shoal.sidecar" (dict "image" "shoal:0.1.0" "tracker" "shoal-tracker-headless.shoal.svc.cluster.local:7400") | nindent 4 }}
    {{- include "shoal.sidecar.fetch" (dict "image" "shoal:0.1.0" "file" "ID" "output" "/shared/model.bin") | nindent 4 }}

Both take: image (required), volume (the emptyDir's name, default "shared"), mountPath (default "/shared"),
uid (default 10001). shoal.sidecar also takes tracker (required, HOST:PORT[,HOST:PORT...]), name (default
"shoal"), port (default 7401), logFormat (default "json"), zone, resources (default: 50m CPU and 64Mi requested,
512Mi limit), tlsSecret (the release's peer certificate Secret, <release>-shoal-peer-tls or tls.existingSecret, when
the release runs TLS, its default: the sidecar then presents it, mounts it readable by the pod's fsGroup, and is
probed on healthPort, default 7411, in plaintext). shoal.sidecar.fetch takes file (required, the file id), output (required, a path under mountPath),
name (default "fetch"), timeoutSeconds (default 300: how long to keep asking the swarm).
The pod must carry the label shoal/peer: "true" when the chart's NetworkPolicies are on. With tlsSecret the pod
also needs the volume: {{ include "shoal.sidecar.tlsVolume" (dict "tlsSecret" "...") | nindent 8 }} under volumes.
*/}}

{{/* The volume of the sidecar's certificate, for the pod's volumes (nothing without tlsSecret). */}}
{{- define "shoal.sidecar.tlsVolume" -}}
{{- with .tlsSecret -}}
- name: shoal-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* Restricted-profile container security context of both containers. */}}
{{- define "shoal.sidecar.securityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 10001 }}
runAsGroup: {{ .uid | default 10001 }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "shoal.sidecar" -}}
{{- if not .image }}{{ fail "shoal.sidecar: image is required" }}{{ end }}
{{- if not .tracker }}{{ fail "shoal.sidecar: tracker is required" }}{{ end }}
{{- $mount := .mountPath | default "/shared" }}
{{- $port := int (.port | default 7401) }}
{{- $healthPort := int (.healthPort | default 7411) }}
{{- $probePort := ternary $healthPort $port (not (empty .tlsSecret)) -}}
- name: {{ .name | default "shoal" }}
  image: {{ .image }}
  args: ["peer"]
  # A native sidecar: started before the next init container, running beside the app, stopped after it.
  restartPolicy: Always
  env:
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    - name: SHOAL_LISTEN
      value: "0.0.0.0:{{ $port }}"
    - name: SHOAL_ADVERTISE
      value: "$(POD_IP):{{ $port }}"
    - name: SHOAL_TRACKER
      value: {{ .tracker | quote }}
    # The store lives in the shared emptyDir, so `get --output` there is a hard link: one copy on disk.
    - name: SHOAL_DATA_DIR
      value: "{{ $mount }}/.shoal"
    - name: SHOAL_LOG_FORMAT
      value: {{ .logFormat | default "json" | quote }}
    {{- with .zone }}
    - name: SHOAL_ZONE
      value: {{ . | quote }}
    {{- end }}
    {{- if .tlsSecret }}
    - name: SHOAL_TLS_CERT
      value: /etc/shoal/tls/tls.crt
    - name: SHOAL_TLS_KEY
      value: /etc/shoal/tls/tls.key
    - name: SHOAL_TLS_CA
      value: /etc/shoal/tls/ca.crt
    # Plaintext health only, for the probes below; the peer port takes mutual TLS alone.
    - name: SHOAL_HEALTH_LISTEN
      value: "$(POD_IP):{{ $healthPort }}"
    {{- end }}
  ports:
    - name: shoal
      containerPort: {{ $port }}
      protocol: TCP
    {{- if .tlsSecret }}
    - name: shoal-health
      containerPort: {{ $healthPort }}
      protocol: TCP
    {{- end }}
  # The fetch container starts once this succeeds: the daemon serves and has its control socket.
  startupProbe:
    grpc:
      port: {{ $probePort }}
    periodSeconds: 1
    failureThreshold: 60
  readinessProbe:
    grpc:
      port: {{ $probePort }}
    periodSeconds: 10
  securityContext:
    {{- include "shoal.sidecar.securityContext" . | nindent 4 }}
  resources:
    {{- toYaml (.resources | default (dict "requests" (dict "cpu" "50m" "memory" "64Mi") "limits" (dict "memory" "512Mi"))) | nindent 4 }}
  volumeMounts:
    - name: {{ .volume | default "shared" }}
      mountPath: {{ $mount }}
    {{- if .tlsSecret }}
    - name: shoal-tls
      mountPath: /etc/shoal/tls
      readOnly: true
    {{- end }}
{{- end }}

{{- define "shoal.sidecar.fetch" -}}
{{- if not .image }}{{ fail "shoal.sidecar.fetch: image is required" }}{{ end }}
{{- if not .file }}{{ fail "shoal.sidecar.fetch: file is required" }}{{ end }}
{{- $mount := .mountPath | default "/shared" }}
{{- if not (hasPrefix (printf "%s/" $mount) (.output | default "")) }}{{ fail (printf "shoal.sidecar.fetch: output must be a path under %s" $mount) }}{{ end -}}
- name: {{ .name | default "fetch" }}
  image: {{ .image }}
  command: ["/bin/sh", "-c"]
  # Ask the sidecar until a holder answers (a fresh release may still be publishing), then exit 0.
  args:
    - |
      set -eu
      mkdir -p "$(dirname "$SHOAL_OUTPUT")"
      deadline=$(( $(date +%s) + {{ int (.timeoutSeconds | default 300) }} ))
      until shoal get "$SHOAL_FILE" --output "$SHOAL_OUTPUT"; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "shoal: $SHOAL_FILE not fetched in time" >&2; exit 1; }
        sleep 2
      done
  env:
    - name: SHOAL_DATA_DIR
      value: "{{ $mount }}/.shoal"
    - name: SHOAL_FILE
      value: {{ .file | quote }}
    - name: SHOAL_OUTPUT
      value: {{ .output | quote }}
  securityContext:
    {{- include "shoal.sidecar.securityContext" . | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 32Mi
    limits:
      memory: 128Mi
  volumeMounts:
    - name: {{ .volume | default "shared" }}
      mountPath: {{ $mount }}
{{- end }}
