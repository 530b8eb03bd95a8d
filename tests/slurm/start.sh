#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for the tests: munge, MariaDB + slurmdbd
# (accounting, so `sacct` answers the Snakemake plugin exactly as on a real cluster),
# slurmctld and slurmd with fake GPUs. Needs root and Debian/Ubuntu packages.
#
# Idempotent: when the cluster is already up it returns at once. Everything it generates
# (config, state, logs, database) lives under $GEOLOC_SLURM_DIR (default /tmp/geoloc-slurm);
# `stop.sh` stops what this script started, by PID.
set -euo pipefail

STATE_DIR=${GEOLOC_SLURM_DIR:-/tmp/geoloc-slurm}
DB_PORT=${GEOLOC_SLURM_DB_PORT:-6820}
CLUSTER=geoloc
PARTITION=${GEOLOC_SLURM_PARTITION:-debug}
ACCOUNT=${GEOLOC_SLURM_ACCOUNT:-geoloc}
# The node looks like a typical GPU node whatever this machine has, so the requests of the
# shipped profiles/slurm fit unchanged; SLURM here neither binds CPUs nor enforces memory.
# The GPUs are fake (device files linked to /dev/null); 8 of them, so that the workflows of
# several test files (make test runs them side by side) do not queue behind each other.
CPUS=${GEOLOC_SLURM_CPUS:-16}
MEMORY_MB=${GEOLOC_SLURM_MEMORY_MB:-128000}
GPUS=${GEOLOC_SLURM_GPUS:-8}
# A GPU type, so that requests naming one (--gpus=tgpu:1, --gres=gpu:tgpu:1) are tried too.
GPU_TYPE=${GEOLOC_SLURM_GPU_TYPE:-tgpu}
SYSTEM_CONF=/etc/slurm/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

ETC=$STATE_DIR/etc
RUN=$STATE_DIR/run
LOG=$STATE_DIR/log
DB_DIR=$STATE_DIR/mysql
DB_SOCKET=$DB_DIR/mysqld.sock
MUNGE_DIR=$STATE_DIR/munge
# Daemons and clients started here read this config; clients started elsewhere find it through
# the $SYSTEM_CONF link.
export SLURM_CONF=$ETC/slurm.conf

log() { echo "slurm/start.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# True when the PID file names a live process.
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Poll a command (up to $1 seconds) until it succeeds.
wait_for() {
    local seconds=$1; shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# The node takes jobs (idle, or busy with some).
node_ready() { [[ $(sinfo -h -N -o '%T' 2>/dev/null) =~ ^(idle|mixed|allocated|completing)$ ]]; }

cluster_up() {
    running "$RUN/slurmctld.pid" && running "$RUN/slurmd.pid" && running "$RUN/slurmdbd.pid" &&
        node_ready && sacct -n -X -j 1 >/dev/null 2>&1
}

install_packages() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'ok installed' ||
            missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >"$LOG/apt.log" 2>&1 || die "apt-get install failed, see $LOG/apt.log"
}

# Record that this script started a daemon, so stop.sh stops only those.
started() { echo "$1" >>"$RUN/started"; }

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged already answers (ours or the machine's)
    fi
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 "$MUNGE_DIR"
    runuser -u munge -- munged --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log"
    started munged
    wait_for 10 bash -c 'munge -n | unmunge' || die "munged does not answer"
}

start_mariadb() {
    running "$DB_DIR/mariadbd.pid" && return
    install -d -o mysql -g mysql -m 0750 "$DB_DIR"
    if [[ ! -d $DB_DIR/data/mysql ]]; then
        mariadb-install-db --user=mysql --datadir="$DB_DIR/data" \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed, see $LOG/mariadb-install.log"
    fi
    # mariadbd stays in the foreground; setsid detaches it from this shell's session.
    setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" \
        --socket="$DB_SOCKET" --pid-file="$DB_DIR/mariadbd.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" \
        --innodb-buffer-pool-size=64M --log-error="$LOG/mariadb.log" </dev/null >/dev/null 2>&1 &
    started mariadbd
    wait_for 60 mariadb-admin --socket="$DB_SOCKET" ping || die "MariaDB does not start, see $LOG/mariadb.log"
}

# slurmdbd's database user; its password is generated once and kept in the state folder.
create_database_user() {
    local password_file=$ETC/db-password
    [[ -s $password_file ]] || (umask 077 && head -c 18 /dev/urandom | base64 >"$password_file")
    DB_PASSWORD=$(cat "$password_file")
    mariadb --socket="$DB_SOCKET" -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
}

write_configs() {
    local node
    node=$(hostname -s)

    # gres needs a device file per GPU; a link to /dev/null is enough.
    mkdir -p "$STATE_DIR/dev"
    for ((gpu = 0; gpu < GPUS; gpu++)); do
        ln -sfn /dev/null "$STATE_DIR/dev/nvidia$gpu"
    done

    cat >"$ETC/slurm.conf" <<CONF
# Generated by tests/slurm/start.sh: a single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/state/slurmctld
SlurmdSpoolDir=$STATE_DIR/state/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=batch_sched_delay=0
# Finished jobs stay visible to squeue/scontrol for 5 minutes.
MinJobAge=300
# Seconds between SIGTERM and SIGKILL when a job is cancelled or hits its time limit.
KillWait=5
ReturnToService=2
# Trust the node's CPUs and memory as configured here rather than as detected.
SlurmdParameters=config_overrides
# Jobs that ask for no memory get this much per CPU, not the whole node.
DefMemPerCPU=1024
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageTRES=gres/gpu
# Keep the job comment (the plugin writes rule and wildcards there) visible to sacct.
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
NodeName=$node NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:$GPU_TYPE:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

    cat >"$ETC/gres.conf" <<CONF
AutoDetect=off
Name=gpu Type=$GPU_TYPE File=$STATE_DIR/dev/nvidia[0-$((GPUS - 1))]
CONF

    # slurmdbd refuses a config readable by others (it holds the database password).
    (umask 077 && cat >"$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
CONF
    )
}

# Clients (sinfo, sbatch, sacct run by Snakemake) read $SYSTEM_CONF; never replace a real one.
link_system_config() {
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$ETC/slurm.conf" ]]; then
        return
    fi
    [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]] &&
        die "$SYSTEM_CONF exists and is not ours; run the tests with SLURM_CONF=$ETC/slurm.conf"
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -s "$ETC/slurm.conf" "$SYSTEM_CONF"
}

start_slurmdbd() {
    running "$RUN/slurmdbd.pid" && return
    slurmdbd
    started slurmdbd
    wait_for 60 sacctmgr -n list cluster || die "slurmdbd does not answer, see $LOG/slurmdbd.log"
}

# Accounting as on a real cluster: the cluster, one account, the current user in it (so the
# plugin's account guess and validation find it).
register_accounting() {
    local user
    user=$(id -un)
    [[ -n $(sacctmgr -n list cluster "$CLUSTER" format=cluster) ]] ||
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    [[ -n $(sacctmgr -n list account "$ACCOUNT" format=account) ]] ||
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="geoloc tests" \
            Organization=geoloc >/dev/null
    [[ -n $(sacctmgr -n list assoc user="$user" account="$ACCOUNT" format=user) ]] ||
        sacctmgr -i add user "$user" Account="$ACCOUNT" >/dev/null
    # root already exists in accounting with default account 'root'.
    [[ $(sacctmgr -n -P list user "$user" format=defaultaccount) == "$ACCOUNT" ]] ||
        sacctmgr -i modify user "$user" set DefaultAccount="$ACCOUNT" >/dev/null
}

start_slurm_daemons() {
    if ! running "$RUN/slurmctld.pid"; then
        slurmctld
        started slurmctld
    fi
    if ! running "$RUN/slurmd.pid"; then
        slurmd
        started slurmd
    fi
    if ! wait_for 60 node_ready; then
        die "node not ready: $(sinfo -N -h -o '%T %E' 2>&1); see $LOG/slurmctld.log and $LOG/slurmd.log"
    fi
}

main() {
    if cluster_up 2>/dev/null; then
        log "already up ($STATE_DIR)"
        return
    fi
    [[ $(id -u) == 0 ]] || die "must run as root (installs packages, starts daemons)"
    local start=$SECONDS
    mkdir -p "$ETC" "$RUN" "$LOG" "$STATE_DIR/state/slurmctld" "$STATE_DIR/state/slurmd"
    chmod 0755 "$STATE_DIR"
    link_system_config
    install_packages
    start_munge
    start_mariadb
    create_database_user
    write_configs
    start_slurmdbd
    register_accounting
    start_slurm_daemons
    log "up in $((SECONDS - start)) s: partition $PARTITION, account $ACCOUNT, $CPUS CPUs, $MEMORY_MB MB, $GPUS fake GPUs of type $GPU_TYPE, state in $STATE_DIR"
}

main "$@"
