#!/bin/bash
# Start one host of the compose test cluster: "head" (MariaDB on a unix socket,
# slurmdbd, accounts, slurmctld) or "node" (slurmd named after the hostname).
# Configuration comes from the generated files mounted at /etc/jobstrap-testcluster.
set -euo pipefail

role=${1:-node}
conf=/etc/jobstrap-testcluster
root=${JOBSTRAP_TESTCLUSTER_ROOT:-/var/lib/jobstrap-testcluster}
sock=$root/run/mysqld/mysqld.sock

# Same names and addresses as the namespace cluster, not Docker's DNS.
cat "$conf/hosts" >/etc/hosts

# Docker names interfaces eth0, eth1 in no promised order: call the one on the
# InfiniBand stand-in network ib0, as on the namespace cluster.
ifc=$(ip -o -4 addr show | awk -v p="$JOBSTRAP_IB_PREFIX" 'index($4, p) == 1 { print $2; exit }')
if [[ -n $ifc && $ifc != ib0 ]]; then
    ip link set "$ifc" down
    ip link set "$ifc" name ib0
    ip link set ib0 up
fi

install -d /etc/slurm
install -m 644 "$conf/slurm.conf" /etc/slurm/slurm.conf
install -m 644 "$conf/cgroup.conf" /etc/slurm/cgroup.conf
install -m 644 "$conf/gres.conf" /etc/slurm/gres.conf
# slurmdbd refuses a config file others can read.
install -m 600 "$conf/slurmdbd.conf" /etc/slurm/slurmdbd.conf

mkdir -p "$root"/{run,log,state/slurmctld,mysql,run/mysqld} "$root/spool/$(hostname)" \
    "$root/tmp/$(hostname)"
chown mysql:mysql "$root/mysql" "$root/run/mysqld"

mkdir -p /run/munge
chown munge:munge /run/munge
runuser -u munge -- /usr/sbin/munged

wait_for() {
    local tries=$1
    shift
    until "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        ((tries > 0)) || { echo "gave up waiting for: $*" >&2; exit 1; }
        sleep 0.5
    done
}

case $role in
head)
    if [[ ! -d $root/mysql/mysql ]]; then
        mariadb-install-db --no-defaults --user=mysql --datadir="$root/mysql" \
            --auth-root-authentication-method=socket --skip-test-db >/dev/null
    fi
    mariadbd --no-defaults --user=mysql --datadir="$root/mysql" --socket="$sock" \
        --skip-networking --log-error="$root/log/mariadb.log" &
    wait_for 60 mariadb --no-defaults --socket="$sock" -e 'select 1'
    MYSQL_UNIX_PORT=$sock slurmdbd
    wait_for 120 sacctmgr -n list cluster
    # QOS named on the cluster line of accounting.cfg must exist before loading it.
    qos=$(sed -n "s/^Cluster - .*QOS='\([^']*\)'.*/\1/p" "$conf/accounting.cfg" | tr , ' ')
    for q in $qos; do
        [[ $q == normal ]] || sacctmgr -i add qos "$q" >/dev/null 2>&1 || true
    done
    sacctmgr -i load file="$conf/accounting.cfg" >/dev/null 2>&1 || true
    exec slurmctld -D
    ;;
node)
    # Fake GPUs (NVIDIA's major number) for Slurm's GRES plugin, as gres.conf lists
    # them; a privileged container has a /dev of its own to make them in.
    for i in 0 1 2 3; do
        [[ -e /dev/nvidia$i ]] || mknod -m 666 "/dev/nvidia$i" c 195 "$i"
    done
    exec slurmd -D -N "$(hostname)"
    ;;
*)
    exec "$@"
    ;;
esac
