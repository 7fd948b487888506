#!/bin/sh
# Entrypoint of nuwax's local PostgreSQL image (built by ../build; Debian's postgresql-N).
#
# Follows the official image's contract where the tests and nuwax rely on it:
#   CMD ["postgres", ARGS...]   initialise $PGDATA when it is empty (POSTGRES_USER, default
#                               postgres; POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust;
#                               POSTGRES_DB), then exec the server as PID 1, as user postgres.
#                               Local (socket) connections are trusted, as in the official image,
#                               so `docker exec ... pg_dumpall -U USER` needs no password.
#   any other command           run as given (e.g. psql, pg_dump, a shell).
# The image stops with SIGINT (PostgreSQL's fast shutdown), set at import.
set -eu

export PATH="/usr/lib/postgresql/$PG_MAJOR/bin:$PATH"

if [ "${1:-}" != postgres ]; then
	exec "$@"
fi
shift

: "${PGDATA:=/var/lib/postgresql/data}"
user=${POSTGRES_USER:-postgres}
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 0700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
	if [ "$auth" != trust ] && [ -z "${POSTGRES_PASSWORD:-}" ]; then
		echo "docker-entrypoint: set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust)" >&2
		exit 1
	fi
	echo "docker-entrypoint: initialising $PGDATA (PostgreSQL $PG_MAJOR)"
	pwfile=$(mktemp)
	printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
	chown postgres "$pwfile"
	as_pg initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
		--auth-local=trust --auth-host="$auth" >/dev/null
	rm -f "$pwfile"
	echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
	echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"
	if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != "$user" ] && [ "$POSTGRES_DB" != postgres ]; then
		# Single-user mode: no server, no socket, nothing to stop afterwards.
		echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$user\";" |
			as_pg postgres --single -j -D "$PGDATA" postgres >/dev/null
	elif [ "$user" != postgres ]; then
		echo "CREATE DATABASE \"$user\" OWNER \"$user\";" |
			as_pg postgres --single -j -D "$PGDATA" postgres >/dev/null
	fi
	echo "docker-entrypoint: initialised"
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
