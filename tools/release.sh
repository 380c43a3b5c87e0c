#!/usr/bin/env bash
# Package the chart and push it to an OCI registry with the image beside it, then pull both back to check:
#   oci://REGISTRY/charts/shoal:<chart version>    (helm install shoal oci://REGISTRY/charts/shoal --version ...)
#   REGISTRY/shoal:<appVersion>                      (image.registry=REGISTRY in the chart's values)
# With no REGISTRY, starts Debian's docker-registry on a free loopback port for the run (KEEP_REGISTRY=1 keeps it
# running) with its storage under .cache/release/registry. `make release` builds the image first.
#
#   REGISTRY      host:port of the registry (plain HTTP on loopback; HTTPS otherwise, after `helm registry login`)
#   IMAGE         local image to push (default shoal:dev)
set -euo pipefail

cd "$(dirname "$0")/.."
HELM=.cache/k8s-tools/bin/helm
OUT=.cache/release
IMAGE=${IMAGE:-shoal:dev}
version=$(awk '/^version:/ {print $2}' charts/shoal/Chart.yaml)
app_version=$(awk '/^appVersion:/ {gsub(/"/, "", $2); print $2}' charts/shoal/Chart.yaml)
started=${SECONDS}
say() { echo "release: $* ($((SECONDS - started)) s)"; }

[[ -x ${HELM} ]] || bash tools/fetch-k8s-tools.sh >/dev/null
docker image inspect "${IMAGE}" >/dev/null 2>&1 || { echo "release: no local image ${IMAGE} (make image)" >&2; exit 1; }
mkdir -p "${OUT}"
work=$(mktemp -d)
registry_pid=
cleanup() {
  rm -rf "${work}"
  if [[ -n ${registry_pid} && ${KEEP_REGISTRY:-0} != 1 ]]; then
    kill "${registry_pid}" 2>/dev/null || true
    wait "${registry_pid}" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if [[ -z ${REGISTRY:-} ]]; then
  command -v docker-registry >/dev/null 2>&1 || {
    echo "release: no REGISTRY given and Debian's docker-registry is not installed (apt-get install docker-registry)" >&2
    exit 1
  }
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "${OUT}/registry"
  cat >"${work}/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $(realpath "${OUT}/registry")
  delete:
    enabled: true
http:
  addr: 127.0.0.1:${port}
EOF
  docker-registry serve "${work}/registry.yml" >"${OUT}/registry.log" 2>&1 &
  registry_pid=$!
  REGISTRY=127.0.0.1:${port}
  for _ in $(seq 1 50); do
    curl -fsS "http://${REGISTRY}/v2/" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "http://${REGISTRY}/v2/" >/dev/null || { echo "release: docker-registry did not start" >&2; cat "${OUT}/registry.log" >&2; exit 1; }
  say "docker-registry on ${REGISTRY} (pid ${registry_pid})"
fi
plain=()
scheme=https
case ${REGISTRY} in
  127.*|localhost:*|localhost) plain=(--plain-http); scheme=http ;;
esac

package=${OUT}/shoal-${version}.tgz
rm -f "${package}"
"${HELM}" package charts/shoal --destination "${OUT}" >/dev/null
say "packaged ${package}"
"${HELM}" push "${package}" "oci://${REGISTRY}/charts" "${plain[@]}"
say "chart pushed to oci://${REGISTRY}/charts/shoal:${version}"
docker tag "${IMAGE}" "${REGISTRY}/shoal:${app_version}"
docker push --quiet "${REGISTRY}/shoal:${app_version}"
docker image rm "${REGISTRY}/shoal:${app_version}" >/dev/null
say "image ${IMAGE} pushed as ${REGISTRY}/shoal:${app_version}"

# Check what a user would fetch: the same chart archive, and an image manifest beside it.
"${HELM}" pull "oci://${REGISTRY}/charts/shoal" --version "${version}" --destination "${work}" "${plain[@]}"
cmp "${work}/shoal-${version}.tgz" "${package}" || { echo "release: the pulled chart differs from the package" >&2; exit 1; }
"${HELM}" show chart "${work}/shoal-${version}.tgz" | grep -q "^version: ${version}$"
manifest=$(curl -fsS -o /dev/null -w '%{http_code}' \
  -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json' \
  "${scheme}://${REGISTRY}/v2/shoal/manifests/${app_version}")
[[ ${manifest} == 200 ]] || { echo "release: no image manifest for shoal:${app_version} (HTTP ${manifest})" >&2; exit 1; }
catalog=$(curl -fsS "${scheme}://${REGISTRY}/v2/_catalog")
echo "release: registry catalog ${catalog}"
say "done: helm install shoal oci://${REGISTRY}/charts/shoal --version ${version} --set image.registry=${REGISTRY}"
