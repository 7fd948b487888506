#!/bin/sh
# Entrypoint of nuwax's local MariaDB image (built by ../build; Debian's mariadb-server).
#
# Follows the official image's contract where the tests and nuwax rely on it:
#   CMD ["mariadbd", ARGS...]   initialise /var/lib/mysql when it is empty (MARIADB_ROOT_PASSWORD;
#                               MARIADB_DATABASE; MARIADB_USER + MARIADB_PASSWORD get all rights
#                               on it), then exec the server as PID 1. root@localhost may also
#                               log in through the socket as uid 0 (unix_socket), as in the
#                               official image, so `docker exec ... mariadb-dump` needs no password.
#   any other command           run as given (e.g. mariadb, mariadb-dump, a shell).
# mariadbd shuts down cleanly on SIGTERM, docker's default stop signal.
set -eu

if [ "${1:-}" != mariadbd ] && [ "${1:-}" != mysqld ]; then
	exec "$@"
fi
shift

datadir=/var/lib/mysql
mkdir -p "$datadir" /run/mysqld
chown mysql:mysql "$datadir" /run/mysqld

# quote S: S as an SQL string literal.
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/''/g")"; }

init=
if [ ! -d "$datadir/mysql" ]; then
	if [ -z "${MARIADB_ROOT_PASSWORD:-}" ]; then
		echo "docker-entrypoint: set MARIADB_ROOT_PASSWORD" >&2
		exit 1
	fi
	echo "docker-entrypoint: initialising $datadir (MariaDB)"
	mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
		--auth-root-authentication-method=normal >/dev/null
	sql=/run/mysqld/init.sql
	pw=$(quote "$MARIADB_ROOT_PASSWORD")
	{
		echo "ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD($pw) OR unix_socket;"
		echo "CREATE USER root@'%' IDENTIFIED BY $pw;"
		echo "GRANT ALL ON *.* TO root@'%' WITH GRANT OPTION;"
		if [ -n "${MARIADB_DATABASE:-}" ]; then
			echo "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
			if [ -n "${MARIADB_USER:-}" ]; then
				echo "CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY $(quote "${MARIADB_PASSWORD:-}");"
				echo "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';"
			fi
		fi
		echo "FLUSH PRIVILEGES;"
	} >"$sql"
	chown mysql "$sql"
	chmod 0600 "$sql"
	# The server runs the file once, at this first start.
	init="--init-file=$sql"
fi

exec mariadbd --user=mysql --datadir="$datadir" --bind-address=0.0.0.0 $init "$@"
