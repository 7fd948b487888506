# shellcheck shell=bash
# Helpers sourced by scripts/demo, scripts/bench and .ci/run: logging, apt
# installs, the Docker engine, compose v1/v2 detection and the v2 install,
# waiting for health.
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

# debian_mirror: print the URI of the system's Debian main archive, read from the
# apt sources (deb822 `.sources` files, then one-line `.list` files): the entry
# whose suites name this release's codename and whose components include main.
# NUWAX_APT_ETC (default /etc/apt) is where the sources are read from.
debian_mirror() {
	local codename f uri etc=${NUWAX_APT_ETC:-/etc/apt}
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[[ -n $codename ]] || {
		say "debian_mirror: no VERSION_CODENAME in /etc/os-release"
		return 1
	}
	for f in "$etc"/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		# One stanza per blank-line-separated paragraph.
		uri=$(awk -v want="$codename" '
			function flush() {
				if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " want " ") &&
					(" " comps " ") ~ / main /) { split(uris, u, " "); print u[1]; found = 1; exit }
				types = uris = suites = comps = enabled = ""
			}
			/^[ \t]*#/ { next }
			/^[ \t]*$/ { flush(); next }
			{
				key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
				if (key == "types") types = $0; else if (key == "uris") uris = $0
				else if (key == "suites") suites = $0; else if (key == "components") comps = $0
				else if (key == "enabled") enabled = tolower($0)
			}
			END { if (!found) flush() }' "$f")
		[[ -n $uri ]] && {
			echo "$uri"
			return 0
		}
	done
	for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do
		[[ -f $f ]] || continue
		# deb [options] URI SUITE COMPONENT...
		uri=$(awk -v want="$codename" '
			$1 != "deb" { next }
			{ i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ } }
			$(i + 1) == want { for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit } }' "$f")
		[[ -n $uri ]] && {
			echo "$uri"
			return 0
		}
	done
	say "debian_mirror: no \`deb\` entry for $codename main in $etc/sources.list{,.d/}"
	return 1
}

# The directory every docker CLI (Debian's 20.10 and upstream's) searches for plugins.
NUWAX_CLI_PLUGINS=${NUWAX_CLI_PLUGINS:-/usr/local/lib/docker/cli-plugins}

# ensure_compose_v2: make `docker compose` (compose v2) work. When it does not,
# takes the docker-compose package of Debian trixie (compose v2 as a CLI plugin;
# bookworm's docker-compose is v1) through a private apt configuration (its own
# sources, lists and archives in a temp dir: the system's apt sources and state
# are not touched) and copies the plugin into $NUWAX_CLI_PLUGINS. Fails loudly.
ensure_compose_v2() {
	if docker compose version >/dev/null 2>&1; then
		return 0
	fi
	command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
		die "compose v2 missing, and no apt-get/dpkg-deb to fetch it: install the docker compose plugin by hand"
	local mirror keyring=/usr/share/keyrings/debian-archive-keyring.gpg d rc=0
	mirror=$(debian_mirror) || die "compose v2 missing, and no Debian mirror found to fetch it from"
	say "installing compose v2: docker-compose from Debian trixie ($mirror) into $NUWAX_CLI_PLUGINS"
	d=$(mktemp -d /tmp/nuwax-compose-v2.XXXXXX) || die "mktemp failed"
	mkdir -p "$d/etc" "$d/lists/partial" "$d/archives/partial" "$d/deb"
	printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
		"$mirror" "$keyring" >"$d/etc/trixie.sources"
	# apt fetches as the unprivileged _apt user when it can write where the files go.
	chmod 755 "$d"
	id _apt >/dev/null 2>&1 && chown _apt "$d/lists/partial" "$d/archives/partial" "$d/deb"
	local -a opts=(
		-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$d/etc"
		-o "Dir::State::lists=$d/lists" -o "Dir::Cache::archives=$d/archives"
		-o "Dir::Cache::pkgcache=$d/pkgcache.bin" -o "Dir::Cache::srcpkgcache=$d/srcpkgcache.bin"
	)
	{
		as_root apt-get -q "${opts[@]}" --error-on=any update >"$d/log" 2>&1 &&
			(cd "$d/deb" && as_root apt-get -q "${opts[@]}" download docker-compose/trixie) >>"$d/log" 2>&1 &&
			as_root dpkg-deb -x "$d"/deb/docker-compose_*.deb "$d/root" >>"$d/log" 2>&1 &&
			as_root install -D -m 755 "$d/root/usr/libexec/docker/cli-plugins/docker-compose" \
				"$NUWAX_CLI_PLUGINS/docker-compose" >>"$d/log" 2>&1
	} || rc=$?
	if [[ $rc -ne 0 ]]; then
		cat "$d/log" >&2
		as_root rm -rf "$d"
		die "installing compose v2 from Debian trixie failed (the log is above)"
	fi
	as_root rm -rf "$d"
	docker compose version >/dev/null 2>&1 ||
		die "compose v2 was placed in $NUWAX_CLI_PLUGINS, yet \`docker compose version\` still fails"
	say "compose v2 installed: $(docker compose version 2>&1 | head -n 1)"
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
