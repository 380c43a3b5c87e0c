#!/usr/bin/env bash
# End to end on a real (kind) cluster: create a three-node cluster whose workers carry zone labels,
# load the image, install the chart with values-kind.yaml, put a file on shoal-peer-0 and get it on
# shoal-peer-2 through `kubectl exec`, compare checksums, check each peer found its zone, run
# `helm test` (which fetches the release peers' canary); then the two ways files reach workloads:
# examples/sidecar (every replica's app starts with the file, checked by its sha256) and node-local
# peers (helm upgrade with peer.nodeLocal.enabled; a pod fetches through its node's socket); then
# delete the cluster (KEEP=1 keeps it).
#
# Needs Docker, kind (https://kind.sigs.k8s.io) and a registry that serves kind's node image; helm
# and kubectl come from `make k8s-tools`. `make e2e-kind` builds the image first.
#
#   IMAGE         image to load (default shoal:dev)
#   KIND_CLUSTER  cluster name (default shoal-e2e)
#   NAMESPACE     namespace of the release (default shoal)
#   SIZE_MIB      size of the file to round-trip (default 64)
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-shoal:dev}
CLUSTER=${KIND_CLUSTER:-shoal-e2e}
NS=${NAMESPACE:-shoal}
SIZE_MIB=${SIZE_MIB:-64}
BIN=.cache/k8s-tools/bin
HELM=${BIN}/helm
KUBECTL=("${BIN}/kubectl" --context "kind-${CLUSTER}" -n "${NS}")
started=${SECONDS}

say() { echo "e2e-kind: $* ($((SECONDS - started)) s)"; }

command -v kind >/dev/null 2>&1 || { echo "e2e-kind: kind is not installed (https://kind.sigs.k8s.io)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "e2e-kind: no Docker engine (make docker-engine)" >&2; exit 1; }
[[ -x ${HELM} ]] || bash tools/fetch-k8s-tools.sh

config=$(mktemp)
cleanup() {
  rm -f "${config}"
  if [[ ${KEEP:-0} != 1 ]]; then
    say "deleting cluster ${CLUSTER}"
    kind delete cluster --name "${CLUSTER}" || true
  fi
}
trap cleanup EXIT

# Two zones, so the peers' Node lookup (peer.zoneFromNode, RBAC get nodes) has something to find.
cat >"${config}" <<'EOF'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
    labels:
      topology.kubernetes.io/zone: zone-a
  - role: worker
    labels:
      topology.kubernetes.io/zone: zone-b
EOF
kind create cluster --name "${CLUSTER}" --config "${config}" --wait 180s
say "cluster up"
kind load docker-image "${IMAGE}" --name "${CLUSTER}"
say "image ${IMAGE} loaded"

"${HELM}" install shoal charts/shoal --kube-context "kind-${CLUSTER}" --namespace "${NS}" --create-namespace \
  -f charts/shoal/values-kind.yaml --set "image.repository=${IMAGE%:*}" --set "image.tag=${IMAGE##*:}" \
  --wait --timeout 5m
"${KUBECTL[@]}" rollout status deployment/shoal-tracker --timeout 2m
"${KUBECTL[@]}" rollout status statefulset/shoal-peer --timeout 2m
say "release ready"

"${KUBECTL[@]}" exec shoal-peer-0 -- sh -c "head -c $((SIZE_MIB * 1048576)) /dev/urandom > /data/e2e.bin"
file_id=$("${KUBECTL[@]}" exec shoal-peer-0 -- shoal put /data/e2e.bin | tail -n 1)
say "published ${file_id} on shoal-peer-0"
for attempt in $(seq 1 30); do
  if "${KUBECTL[@]}" exec shoal-peer-2 -- shoal get "${file_id}" --output /data/e2e.bin; then
    break
  fi
  [[ ${attempt} -lt 30 ]] || { echo "e2e-kind: shoal get failed 30 times" >&2; exit 1; }
  sleep 2
done
want=$("${KUBECTL[@]}" exec shoal-peer-0 -- sha256sum /data/e2e.bin | cut -d' ' -f1)
got=$("${KUBECTL[@]}" exec shoal-peer-2 -- sha256sum /data/e2e.bin | cut -d' ' -f1)
[[ ${want} == "${got}" ]] || { echo "e2e-kind: checksums differ: ${want} != ${got}" >&2; exit 1; }
say "round trip ok (sha256 ${want})"

for pod in shoal-peer-0 shoal-peer-1 shoal-peer-2; do
  "${KUBECTL[@]}" exec "${pod}" -- shoal status | grep -q "(zone zone-" \
    || { echo "e2e-kind: ${pod} found no zone:" >&2; "${KUBECTL[@]}" exec "${pod}" -- shoal status >&2; exit 1; }
done
say "every peer knows its zone"

"${HELM}" test shoal --kube-context "kind-${CLUSTER}" --namespace "${NS}" --timeout 5m --logs
say "helm test passed"

# Pod-level peers: the sidecar example, its file published on shoal-peer-1.
"${KUBECTL[@]}" exec shoal-peer-1 -- sh -c "head -c $((SIZE_MIB * 1048576)) /dev/urandom > /data/model.bin"
model_id=$("${KUBECTL[@]}" exec shoal-peer-1 -- shoal put /data/model.bin | tail -n 1)
model_sum=$("${KUBECTL[@]}" exec shoal-peer-1 -- sha256sum /data/model.bin | cut -d' ' -f1)
sed -e "s/FILE_ID/${model_id}/" -e "s#shoal:0.1.0#${IMAGE}#g" -e "s/namespace: shoal/namespace: ${NS}/" \
  -e "s/shoal-tracker-headless.shoal.svc/shoal-tracker-headless.${NS}.svc/" examples/sidecar/deployment.yaml \
  | "${KUBECTL[@]}" apply -f -
"${KUBECTL[@]}" rollout status deployment/model-server --timeout 5m
for pod in $("${KUBECTL[@]}" get pods -l app.kubernetes.io/name=model-server -o name); do
  "${KUBECTL[@]}" logs "${pod}" -c app | grep -q "^${model_sum}  /shared/files/model.bin$" \
    || { echo "e2e-kind: ${pod} did not start with the file" >&2; "${KUBECTL[@]}" logs "${pod}" --all-containers >&2; exit 1; }
done
say "sidecar example: every replica started with the file"

# Node-local peers: a DaemonSet, and a pod that fetches through its node's socket.
"${HELM}" upgrade shoal charts/shoal --kube-context "kind-${CLUSTER}" --namespace "${NS}" --reuse-values \
  --set peer.nodeLocal.enabled=true --wait --timeout 5m
"${KUBECTL[@]}" rollout status daemonset/shoal-node-peer --timeout 3m
host_dir=/var/lib/shoal/${NS}-shoal
"${KUBECTL[@]}" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: node-local-client
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: app
      image: ${IMAGE}
      command: ["/bin/sh", "-c", "shoal --peer unix:/shoal/run/control.sock get ${model_id} --output /shoal/files/model.bin && sha256sum /shoal/files/model.bin"]
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      volumeMounts:
        - {name: run, mountPath: /shoal/run}
        - {name: files, mountPath: /shoal/files, readOnly: true}
  volumes:
    - {name: run, hostPath: {path: ${host_dir}/run, type: Directory}}
    - {name: files, hostPath: {path: ${host_dir}/files, type: Directory}}
EOF
"${KUBECTL[@]}" wait pod/node-local-client --for=jsonpath='{.status.phase}'=Succeeded --timeout 3m
"${KUBECTL[@]}" logs node-local-client | grep -q "^${model_sum}  /shoal/files/model.bin$" \
  || { echo "e2e-kind: the node-local client got the wrong bytes" >&2; "${KUBECTL[@]}" logs node-local-client >&2; exit 1; }
say "node-local peers: a pod fetched the file through its node's socket"
