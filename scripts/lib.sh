# shellcheck shell=bash
# Helpers sourced by scripts/demo, scripts/bench and .ci/run: logging, apt
# installs, the Docker engine, compose v1/v2 detection, waiting for health.
#
# Sourcing has no side effects; every function is safe to call more than once.

# say MSG...: a log line on stderr (stdout is for data).
say() { printf '%s\n' "$*" >&2; }

die() {
	say "error: $*"
	exit 1
}

# section TITLE: a header that stands out in CI logs.
section() { printf '\n==== %s ====\n' "$*" >&2; }

# as_root CMD...: run CMD as root, through sudo when we are not root.
as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo -n "$@"
	else
		die "need root for: $* (run as root or install sudo)"
	fi
}

_nuwax_apt_updated=
# apt_install PKG...: non-interactive install, with one `apt-get update` per run.
apt_install() {
	command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
	say "installing $* (apt-get)"
	if [[ -z $_nuwax_apt_updated ]]; then
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null ||
			die "apt-get update failed"
		_nuwax_apt_updated=1
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" </dev/null >/dev/null ||
		die "apt-get install $* failed"
}

# ensure_tool CMD PKG: install PKG when CMD (a name or a path) is missing.
ensure_tool() {
	command -v "$1" >/dev/null || apt_install "$2"
	command -v "$1" >/dev/null || die "$1 still missing after installing $2"
}

# has_static_busybox: /bin/busybox exists and needs no libc (busybox-static).
has_static_busybox() {
	[[ -x /bin/busybox ]] && ! LC_ALL=C ldd /bin/busybox >/dev/null 2>&1
}

_nuwax_compose=
# compose_cmd: print the compose command as words, preferring v2's
# `docker compose` over v1's `docker-compose`. Fails when neither is there.
compose_cmd() {
	if [[ -z $_nuwax_compose ]]; then
		if docker compose version >/dev/null 2>&1; then
			_nuwax_compose="docker compose"
		elif command -v docker-compose >/dev/null; then
			_nuwax_compose="docker-compose"
		else
			say "no compose found: neither \`docker compose\` nor \`docker-compose\` works"
			return 1
		fi
	fi
	echo "$_nuwax_compose"
}

# compose ARGS...: run the detected compose with ARGS.
compose() {
	local -a cmd
	read -ra cmd <<<"$(compose_cmd)" || return 1
	"${cmd[@]}" "$@"
}

# ensure_docker: make sure a Docker engine answers, a compose exists and the
# static busybox the demo image needs is there. Installs what is missing from
# Debian (docker.io, docker-compose, busybox-static) and starts dockerd in the
# background when no engine answers. Fails loudly after 60 s.
ensure_docker() {
	local -a pkgs=()
	if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null; then
		# Only when the engine is not already answering (e.g. a remote DOCKER_HOST).
		docker info >/dev/null 2>&1 || pkgs+=(docker.io docker-compose busybox-static)
	fi
	if [[ ${#pkgs[@]} -eq 0 ]]; then
		if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
			pkgs+=(docker-compose)
		fi
		has_static_busybox || pkgs+=(busybox-static)
	fi
	[[ ${#pkgs[@]} -eq 0 ]] || apt_install "${pkgs[@]}"
	has_static_busybox || die "/bin/busybox is not the static build: apt-get install busybox-static"

	docker info >/dev/null 2>&1 && return 0
	_start_dockerd
	local i
	for ((i = 0; i < 60; i++)); do
		docker info >/dev/null 2>&1 && {
			say "docker engine is up"
			return 0
		}
		sleep 1
	done
	say "docker info still fails after 60 s:"
	docker info >&2 || true
	[[ -f ${NUWAX_DOCKERD_LOG:-} ]] && tail -n 30 "$NUWAX_DOCKERD_LOG" >&2
	die "no Docker engine: start dockerd (see the log above)"
}

# _start_dockerd: through systemd when it runs the machine, else a detached
# dockerd logging to $NUWAX_DOCKERD_LOG, left running after this script.
_start_dockerd() {
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
		say "starting docker (systemctl start docker)"
		as_root systemctl start docker && return 0
	fi
	if [[ -S /var/run/docker.sock ]] && command -v pgrep >/dev/null && pgrep -x dockerd >/dev/null; then
		say "dockerd is running but does not answer yet; waiting"
		return 0
	fi
	command -v dockerd >/dev/null || die "dockerd not found: apt-get install docker.io"
	NUWAX_DOCKERD_LOG=${NUWAX_DOCKERD_LOG:-/var/log/nuwax-dockerd.log}
	say "starting dockerd in the background (log: $NUWAX_DOCKERD_LOG)"
	# setsid: a new session, so CI tearing down our process group spares it.
	local detach=
	command -v setsid >/dev/null && detach=setsid
	# shellcheck disable=SC2016 # $1 and $2 expand in the inner sh
	as_root sh -c 'nohup $1 dockerd >>"$2" 2>&1 </dev/null &' sh "$detach" "$NUWAX_DOCKERD_LOG"
}

# wait_healthy SECONDS ID...: wait until every container is healthy (or just
# running when it has no healthcheck). On timeout print their states and fail.
wait_healthy() {
	local timeout=$1 id state ok i
	shift
	[[ $# -gt 0 ]] || die "wait_healthy: no containers"
	for ((i = 0; i < timeout * 2; i++)); do
		ok=1
		for id in "$@"; do
			state=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null)
			[[ $state == healthy || $state == running ]] || ok=
		done
		[[ -n $ok ]] && return 0
		sleep 0.5
	done
	say "containers not healthy after ${timeout}s:"
	docker inspect -f '  {{.Name}}: {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$@" >&2
	return 1
}
