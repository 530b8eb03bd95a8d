#!/usr/bin/env bash
# Stop the daemons that tests/slurm/start.sh started (by PID, newest first) and remove the
# /etc/slurm/slurm.conf link it made. The state folder is kept: a later start reuses the
# database and is faster. Safe to call when nothing runs.
set -uo pipefail

STATE_DIR=${GEOLOC_SLURM_DIR:-/tmp/geoloc-slurm}
RUN=$STATE_DIR/run
SYSTEM_CONF=/etc/slurm/slurm.conf

log() { echo "slurm/stop.sh: $*" >&2; }

pid_file_of() {
    case $1 in
        munged) echo "$STATE_DIR/munge/munged.pid" ;;
        mariadbd) echo "$STATE_DIR/mysql/mariadbd.pid" ;;
        *) echo "$RUN/$1.pid" ;;
    esac
}

# SIGTERM, then wait up to 30 s for the process to exit (MariaDB flushes, slurmctld saves state).
stop_daemon() {
    local name=$1 pid_file pid
    pid_file=$(pid_file_of "$name")
    [[ -s $pid_file ]] || return 0
    pid=$(cat "$pid_file")
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name ($pid)"; return 0; }
        sleep 0.5
    done
    log "$name ($pid) ignored SIGTERM for 30 s, killing it"
    kill -KILL "$pid" 2>/dev/null
}

if [[ -s $RUN/started ]]; then
    # Reverse start order: slurmd and slurmctld before slurmdbd, the database and munge.
    for name in $(tac "$RUN/started" | awk '!seen[$0]++'); do
        stop_daemon "$name"
    done
    rm -f "$RUN/started"
fi

if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$STATE_DIR/etc/slurm.conf" ]]; then
    rm -f "$SYSTEM_CONF"
fi
