#!/usr/bin/env bash
# Make sure a Docker engine answers on /var/run/docker.sock: install Debian's docker.io (and
# debootstrap, for the offline base image) when missing, then start dockerd in the background if it
# is not running. `stop` ends a dockerd this script started (its pid is kept in .cache/docker/).
#
# dockerd is detached from the caller (setsid, stdin from /dev/null, output to a log file) so a CI
# runner that waits for its pipes to close never waits on it. Fails loudly if the engine won't come up.
# dockerd changes the host: iptables rules (FORWARD policy DROP), ip_forward, the docker0 bridge.
# `start` saves them first and `stop` puts them back, so later suites see the host as it was.
set -euo pipefail

cd "$(dirname "$0")/.."
STATE=${DOCKER_ENGINE_STATE:-.cache/docker}
LOG=${STATE}/dockerd.log
PIDFILE=${STATE}/dockerd.pid
WAIT=${DOCKER_ENGINE_WAIT:-60}
if [[ ${EUID} -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi

engine_up() { docker info >/dev/null 2>&1; }

install_missing() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "docker-engine: installing ${missing[*]}"
  # Keep the package's maintainer scripts from starting dockerd as a system service.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [[ ! -e ${policy} ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "${policy}" >/dev/null
    "${SUDO[@]}" chmod 755 "${policy}"
    own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  "${SUDO[@]}" apt-get "${apt_opts[@]}" update -qq
  "${SUDO[@]}" apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ ${own_policy} -eq 1 ]]; then "${SUDO[@]}" rm -f "${policy}"; fi
}

start() {
  install_missing
  if engine_up; then
    echo "docker-engine: running ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
    return 0
  fi
  mkdir -p "${STATE}"
  "${SUDO[@]}" iptables-save >"${STATE}/iptables.before"
  cat /proc/sys/net/ipv4/ip_forward >"${STATE}/ip_forward.before"
  if ip link show docker0 >/dev/null 2>&1; then echo yes; else echo no; fi >"${STATE}/docker0.before"
  echo "docker-engine: starting dockerd (log: ${LOG})"
  # shellcheck disable=SC2024  # the log belongs to the caller
  setsid "${SUDO[@]}" dockerd </dev/null >"${LOG}" 2>&1 &
  echo $! >"${PIDFILE}"
  local deadline=$((SECONDS + WAIT))
  until engine_up; do
    if ! kill -0 "$(cat "${PIDFILE}")" 2>/dev/null; then
      echo "docker-engine: dockerd exited; last lines of ${LOG}:" >&2
      tail -n 30 "${LOG}" >&2
      rm -f "${PIDFILE}"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "docker-engine: dockerd did not answer within ${WAIT} s; last lines of ${LOG}:" >&2
      tail -n 30 "${LOG}" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "docker-engine: dockerd $(docker version --format '{{.Server.Version}}') up (pid $(cat "${PIDFILE}"))"
}

stop() {
  [[ -f ${PIDFILE} ]] || { echo "docker-engine: not started by this script; left alone"; return 0; }
  local pid
  pid=$(cat "${PIDFILE}")
  if kill -0 "${pid}" 2>/dev/null; then
    echo "docker-engine: stopping dockerd (pid ${pid})"
    kill -TERM "${pid}"
    for _ in $(seq 1 60); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "${PIDFILE}"
  restore_host
}

# Undo dockerd's changes to the root network namespace, as saved by start.
restore_host() {
  if [[ -f ${STATE}/iptables.before ]]; then
    "${SUDO[@]}" iptables-restore <"${STATE}/iptables.before"
    rm -f "${STATE}/iptables.before"
  fi
  if [[ -f ${STATE}/ip_forward.before ]]; then
    "${SUDO[@]}" sysctl -q -w "net.ipv4.ip_forward=$(cat "${STATE}/ip_forward.before")"
    rm -f "${STATE}/ip_forward.before"
  fi
  if [[ $(cat "${STATE}/docker0.before" 2>/dev/null) == no ]] && ip link show docker0 >/dev/null 2>&1; then
    "${SUDO[@]}" ip link delete docker0
  fi
  rm -f "${STATE}/docker0.before"
  echo "docker-engine: host iptables, ip_forward and bridges restored"
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
