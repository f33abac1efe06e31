# shellcheck shell=bash
# PostgreSQL for CI, sourced by .ci/run: find a server, or install one from Debian's packages.
# tests/test_ci_postgres.py runs these functions.

PG_HOST=127.0.0.1
PG_PORT="${CI_POSTGRES_PORT:-5432}"

# Whether something accepts TCP connections on host:port (bash's /dev/tcp, 2 s at most).
pg_answers() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# What CI does about PostgreSQL, one word:
#   url      COLLECTFLOW_TEST_DATABASE_URL is set: the tests use it, nothing to do
#   running  a server answers on 127.0.0.1:$PG_PORT
#   install  nothing answers, and we are root with apt-get: install one
#   none     nothing answers and we cannot install: the PostgreSQL tests will skip
postgres_plan() {
  if [ -n "${COLLECTFLOW_TEST_DATABASE_URL:-}" ]; then
    echo url
  elif pg_answers "$PG_HOST" "$PG_PORT"; then
    echo running
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo install
  else
    echo none
  fi
}

# Install Debian's PostgreSQL, trust local TCP connections of user postgres, start the
# cluster, and create the `test` database the suite uses (tests/conftest.py).
install_postgres() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  local version hba
  version=$(pg_lsclusters --no-header | awk '$2 == "main" {print $1}' | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    pg_createcluster "$version" main
  fi
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  # pg_hba.conf is read top down, first match wins: these lines go first.
  sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
  sed -i "s/^#\?port = .*/port = $PG_PORT/" "/etc/postgresql/$version/main/postgresql.conf"
  if pg_ctlcluster "$version" main status >/dev/null 2>&1; then
    pg_ctlcluster "$version" main restart
  else
    pg_ctlcluster "$version" main start
  fi
  for _ in $(seq 30); do
    pg_answers "$PG_HOST" "$PG_PORT" && break
    sleep 1
  done
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -c "CREATE DATABASE test" >/dev/null
  fi
  echo "PostgreSQL $version installed and started on $PG_HOST:$PG_PORT (database test)"
}

# The count the suite prints (tests/conftest.py, pytest_terminal_summary), from a pytest log:
# "PostgreSQL tests: 180 ran, 0 skipped" gives 180; no such line gives 0.
postgres_tests_ran() {
  sed -n 's/^PostgreSQL tests: \([0-9]*\) ran.*/\1/p' "$1" | tail -n 1 | grep . || echo 0
}
