#!/usr/bin/env bash
# Install the Debian packages the tests and benches need, only those missing; idempotent.
#
# iproute2/iptables: fault-injection suite (network namespaces); curl + nginx-light: bench/pair.py
# baseline and the HTTP origin of tests/origins; prometheus: the metrics suite (/usr/bin/prometheus,
# /usr/bin/promtool); docker-registry + openssl: the OCI origin and the HTTPS certificate of tests/origins;
# aria2 + mktorrent + opentracker: the reference client, torrent maker and tracker of bench/swarm.py (bench/aria2.py).
# Nothing is left running: daemons are started by the tests and benches themselves, as subprocesses.
set -euo pipefail

if [[ ${EUID} -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi

# "package:check" pairs; the check is a path that must be executable once the package is in.
wanted=(
  "iproute2:/usr/sbin/ip"
  "iptables:/usr/sbin/iptables"
  "curl:/usr/bin/curl"
  "nginx-light:/usr/sbin/nginx"
  "prometheus:/usr/bin/prometheus"
  "prometheus:/usr/bin/promtool"
  "docker-registry:/usr/bin/docker-registry"
  "openssl:/usr/bin/openssl"
  "aria2:/usr/bin/aria2c"
  "mktorrent:/usr/bin/mktorrent"
  "opentracker:/usr/bin/opentracker"
)

missing=()
for pair in "${wanted[@]}"; do
  pkg=${pair%%:*}
  bin=${pair#*:}
  if [[ -x ${bin} ]] || command -v "$(basename "${bin}")" >/dev/null 2>&1; then
    continue
  fi
  [[ " ${missing[*]-} " == *" ${pkg} "* ]] || missing+=("${pkg}")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "system-deps: all present (ip, iptables, curl, nginx, prometheus, promtool, docker-registry, openssl, aria2c," \
    "mktorrent, opentracker)"
  exit 0
fi

echo "system-deps: installing ${missing[*]}"
start=${SECONDS}

# Keep maintainer scripts from starting nginx/prometheus/opentracker as system services: a policy-rc.d that
# denies every start (exit 101), removed afterwards unless one was already there.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e ${policy} ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "${policy}" >/dev/null
  "${SUDO[@]}" chmod 755 "${policy}"
  own_policy=1
fi
cleanup() {
  if [[ ${own_policy} -eq 1 ]]; then "${SUDO[@]}" rm -f "${policy}"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
"${SUDO[@]}" apt-get "${apt_opts[@]}" update -qq
"${SUDO[@]}" apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}"

# Belt and braces: if a service did start anyway (e.g. systemd ignoring policy-rc.d), stop it and
# keep it from starting at boot.
for svc in nginx prometheus docker-registry opentracker; do
  if [[ -e /etc/init.d/${svc} ]] && "${SUDO[@]}" service "${svc}" status >/dev/null 2>&1; then
    echo "system-deps: stopping the ${svc} system service"
    "${SUDO[@]}" service "${svc}" stop || true
  fi
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    "${SUDO[@]}" systemctl disable --now "${svc}" >/dev/null 2>&1 || true
  fi
done

echo "system-deps: done in $((SECONDS - start)) s"
