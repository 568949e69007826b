#!/usr/bin/env bash
# Start (up) or stop (down) the local Postgres and Redis for the test suite.
# `up` leaves a service that already answers alone, so it is safe to run any number of times.
# The moto S3 server is not handled here: test fixtures start it on a free port.
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=${PG_PORT:-5432}
REDIS_HOST=127.0.0.1
REDIS_PORT=${REDIS_PORT:-6379}
WAIT_S=30

pg_version() {
    ls /etc/postgresql | sort -V | tail -n 1
}

pg_answers() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
}

redis_answers() {
    [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

wait_for() {
    local name=$1 check=$2
    for _ in $(seq "$WAIT_S"); do
        if "$check"; then
            return 0
        fi
        sleep 1
    done
    echo "services: $name did not answer within ${WAIT_S}s" >&2
    return 1
}

postgres_up() {
    if pg_answers; then
        echo "services: postgres already answers on $PG_HOST:$PG_PORT"
        return 0
    fi
    echo "services: starting postgres $(pg_version)/main"
    pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main start
    wait_for postgres pg_answers
    echo "services: postgres started on $PG_HOST:$PG_PORT"
}

redis_up() {
    if redis_answers; then
        echo "services: redis already answers on $REDIS_HOST:$REDIS_PORT"
        return 0
    fi
    echo "services: starting redis"
    redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
    wait_for redis redis_answers
    echo "services: redis started on $REDIS_HOST:$REDIS_PORT"
}

postgres_down() {
    if ! pg_answers; then
        echo "services: postgres is not running"
        return 0
    fi
    pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main stop
    echo "services: postgres stopped"
}

redis_down() {
    if ! redis_answers; then
        echo "services: redis is not running"
        return 0
    fi
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    echo "services: redis stopped"
}

case "${1:-}" in
    up)
        postgres_up
        redis_up
        ;;
    down)
        postgres_down
        redis_down
        ;;
    *)
        echo "usage: $0 up|down" >&2
        exit 2
        ;;
esac
