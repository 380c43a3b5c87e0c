#!/usr/bin/env bash
# Build the shoal image without reaching a container registry: start the Docker engine, make the
# base image (Debian bookworm minbase + python3 from debootstrap, cached as a tarball under
# .cache/image/) unless BASE_IMAGE names one, fill .cache/wheelhouse with shoal's wheel and its
# dependencies' from PyPI, then `docker build` with no network. Prints the image's size.
#
#   IMAGE       tag to build (default shoal:dev)
#   BASE_IMAGE  base image to use as is, e.g. python:3.11-slim-bookworm where a registry is
#               reachable (default: the debootstrap base, built or reused)
#   DEBIAN_MIRROR  mirror for debootstrap (default: the first bookworm URI in the apt sources)
#   PUSH_IMAGE  true: push IMAGE after building (skaffold's custom-build contract)
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-shoal:dev}
BASE_IMAGE=${BASE_IMAGE:-}
if [[ -z ${PY:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
CACHE=.cache/image
WHEELHOUSE=.cache/wheelhouse
SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates
TARGET_PYTHON=3.11

phase_start=${SECONDS}
phase() {
  echo "build-image: $1 ($((SECONDS - phase_start)) s)"
  phase_start=${SECONDS}
}

bash tools/docker-engine.sh start
phase "engine ready"

debian_mirror() {
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then
    echo "${DEBIAN_MIRROR}"
    return
  fi
  local uri
  # deb822 sources: the URIs line of the stanza whose Suites include the plain suite.
  uri=$(awk -v suite="${SUITE}" '
    /^URIs:/ { uris = $2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) { print uris; exit } }
    /^$/ { uris = "" }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [[ -z ${uri} && -f /etc/apt/sources.list ]]; then
    uri=$(awk -v suite="${SUITE}" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

mkdir -p "${CACHE}"

# The debootstrap base: rootfs tarball cached by suite and package list, imported once per engine.
if [[ -z ${BASE_IMAGE} ]]; then
  key=$(printf '%s %s minbase' "${SUITE}" "${INCLUDE}" | sha256sum | cut -c1-12)
  BASE_IMAGE=shoal-base:${SUITE}-${key}
  tarball=${CACHE}/${SUITE}-minbase-${key}.tar
  if ! docker image inspect "${BASE_IMAGE}" >/dev/null 2>&1; then
    if [[ ! -f ${tarball} ]]; then
      command -v debootstrap >/dev/null 2>&1 || { echo "build-image: debootstrap missing" >&2; exit 1; }
      mirror=$(debian_mirror)
      echo "build-image: debootstrap ${SUITE} (minbase + ${INCLUDE}) from ${mirror}"
      mkdir -p "${CACHE}"
      rootfs=$(mktemp -d "${CACHE}/rootfs.XXXXXX")
      trap 'rm -rf "${rootfs}"' EXIT
      debootstrap --variant=minbase --include="${INCLUDE}" "${SUITE}" "${rootfs}" "${mirror}" \
        >"${CACHE}/debootstrap.log" 2>&1 || {
        echo "build-image: debootstrap failed; last lines of ${CACHE}/debootstrap.log:" >&2
        tail -n 30 "${CACHE}/debootstrap.log" >&2
        exit 1
      }
      # Nothing a runtime needs: package caches, indexes, docs, man pages, translations.
      rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/cache/apt/*.bin \
        "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/usr/share/doc/* "${rootfs}"/usr/share/man/* \
        "${rootfs}"/usr/share/info/* "${rootfs}"/usr/share/locale/* "${rootfs}"/var/log/*.log
      tar --numeric-owner -C "${rootfs}" -cf "${tarball}.tmp" .
      mv "${tarball}.tmp" "${tarball}"
      rm -rf "${rootfs}"
      trap - EXIT
      phase "debootstrap done, tarball ${tarball} ($(du -h "${tarball}" | cut -f1))"
    fi
    docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' \
      "${tarball}" "${BASE_IMAGE}" >/dev/null
    phase "imported ${BASE_IMAGE}"
  fi
fi

# The wheelhouse: dependencies as wheels for CPython 3.11 on this architecture (fetched once per
# pyproject.toml), shoal's own wheel rebuilt every time from the work tree.
arch=$(uname -m)
mkdir -p "${WHEELHOUSE}"
deps_key=$(cat pyproject.toml "$0" | sha256sum | cut -c1-12)
if [[ ! -f ${WHEELHOUSE}/.deps-${deps_key} ]]; then
  rm -f "${WHEELHOUSE}"/*.whl "${WHEELHOUSE}"/.deps-*
  "${PY}" - >"${WHEELHOUSE}/requirements.txt" <<'PYEOF'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PYEOF
  "${PY}" -m pip download -q --disable-pip-version-check --dest "${WHEELHOUSE}" \
    --only-binary=:all: --implementation cp --python-version "${TARGET_PYTHON}" \
    --platform "manylinux_2_17_${arch}" --platform "manylinux2014_${arch}" \
    --platform "manylinux_2_28_${arch}" --platform "manylinux_2_34_${arch}" \
    -r "${WHEELHOUSE}/requirements.txt"
  touch "${WHEELHOUSE}/.deps-${deps_key}"
  phase "dependency wheels downloaded"
fi
rm -f "${WHEELHOUSE}"/shoal-*.whl
"${PY}" -m pip wheel -q --disable-pip-version-check --no-deps --wheel-dir "${WHEELHOUSE}" . >/dev/null
rm -rf build services/shoal.egg-info/SOURCES.txt.tmp
phase "shoal wheel built"

# --network none: the build must need nothing from outside the context.
docker build --network none --build-arg "BASE_IMAGE=${BASE_IMAGE}" -t "${IMAGE}" . >"${CACHE}/build.log" 2>&1 || {
  echo "build-image: docker build failed; last lines of ${CACHE}/build.log:" >&2
  tail -n 40 "${CACHE}/build.log" >&2
  exit 1
}
phase "docker build done"
size=$(docker image inspect --format '{{.Size}}' "${IMAGE}")
echo "build-image: ${IMAGE} from ${BASE_IMAGE}: $((size / 1024 / 1024)) MiB"
if [[ ${PUSH_IMAGE:-false} == true ]]; then
  docker push "${IMAGE}"
  phase "pushed ${IMAGE}"
fi
