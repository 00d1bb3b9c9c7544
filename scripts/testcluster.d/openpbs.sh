# OpenPBS on the test cluster: build from a source tarball, run it next to Slurm.
# Sourced by scripts/testcluster (which defines ROOT, REPO, note, die, in_host, ...).
#
# No package registry ships OpenPBS, so `install` builds it from a source tarball
# (by default ../shared/vendor/openpbs-*.tar.gz beside the repository, else the
# same commit downloaded from github.com/openpbs/openpbs) into
# /opt/pbs, and stamps the install with the source's commit: an install of the
# same commit is reused, never rebuilt.  `up` then runs pbs_server, pbs_sched,
# pbs_comm and PBS's own PostgreSQL on head and one pbs_mom per compute node,
# each in its host's namespaces (own hostname, eth0 and ib0).
# shellcheck shell=bash

PBS_EXEC=${JOBSTRAP_PBS_EXEC:-/opt/pbs}
PBS_STAMP=$PBS_EXEC/.jobstrap-build
# Written by `up`, removed by `down` only when it carries this marker.
PBS_CONF=/etc/pbs.conf
PBS_CONF_MARKER='# scripts/testcluster - do not edit'
PBS_APT_PACKAGES=(
    gcc g++ make libtool autoconf automake perl swig python3-dev tcl-dev tk-dev
    libhwloc-dev libx11-dev libxt-dev libxext-dev libxft-dev libedit-dev libical-dev
    libncurses-dev libexpat1-dev libssl-dev libcjson-dev postgresql-server-dev-all
    postgresql postgresql-contrib expat libedit2 libical3 libcjson1 tcl tk sudo
)

# The commit the tests are known to work with (OpenPBS 23.06.06), and its archive's
# digest: a download is checked against it before anything is built from it.
OPENPBS_COMMIT=cd7ab5edaf03dcac2f1cb9e2f42d75eb117d468a
OPENPBS_URL=https://codeload.github.com/openpbs/openpbs/tar.gz/$OPENPBS_COMMIT
OPENPBS_CACHE=/var/cache/jobstrap-testcluster

# The tarball to build from: --openpbs-source, else the one kept beside the repo,
# else the same commit downloaded from the public repository (kept in a root-only
# cache so a rebuild does not download again).  Prints nothing when none is found.
openpbs_source() {
    local given=${1:-} f
    if [[ -n $given ]]; then
        printf '%s' "$given" # checked by the caller: a die here would end only $(...)
        return 0
    fi
    for f in "$REPO"/../shared/vendor/openpbs-*.tar.gz "$OPENPBS_CACHE"/openpbs-*.tar.gz; do
        [[ -f $f ]] && { printf '%s' "$f"; return 0; }
    done
    openpbs_download
    return 0
}

# Fetch $OPENPBS_COMMIT's archive; keep it only if git says it is that commit.
openpbs_download() {
    local out=$OPENPBS_CACHE/openpbs-${OPENPBS_COMMIT:0:7}.tar.gz tmp id
    command -v curl >/dev/null || return 0
    install -d -m 0700 "$OPENPBS_CACHE"
    tmp=$(mktemp "$OPENPBS_CACHE/download.XXXXXX")
    if curl -fsSL --retry 2 --max-time 300 -o "$tmp" "$OPENPBS_URL" 2>/dev/null; then
        id=$(openpbs_source_id "$tmp")
        if [[ $id == "$OPENPBS_COMMIT" ]]; then
            mv "$tmp" "$out"
            printf '%s' "$out"
            return 0
        fi
        note "downloaded OpenPBS archive is not commit ${OPENPBS_COMMIT:0:12} ($id): not used" >&2
    fi
    rm -f "$tmp"
}

# The commit a `git archive` tarball was made from (its pax header), else its sha256.
openpbs_source_id() {
    local id=
    if command -v git >/dev/null; then
        id=$(gzip -dc "$1" | git get-tar-commit-id 2>/dev/null || true)
    fi
    [[ -n $id ]] || id=sha256:$(sha256sum "$1" | cut -d' ' -f1)
    printf '%s' "$id"
}

pbs_installed() {
    [[ -x $PBS_EXEC/sbin/pbs_server && -f $PBS_STAMP ]]
}

# install_openpbs [TARBALL]: build and install unless the same commit is installed.
install_openpbs() {
    local src=$1 id t0 build log
    t0=$(now)
    if [[ -z $src ]]; then
        if pbs_installed; then
            note "no OpenPBS source given: keeping the OpenPBS in $PBS_EXEC" \
                "($(cut -c1-12 "$PBS_STAMP"))"
        else
            note "no OpenPBS source (../shared/vendor/openpbs-*.tar.gz, --openpbs-source," \
                "or a download of ${OPENPBS_COMMIT:0:12}): PBS is skipped; its tests will skip"
        fi
        return 0
    fi
    id=$(openpbs_source_id "$src")
    # Also for a reused install: PBS runs on PostgreSQL, libical, Tcl, ... from them.
    install_apt_packages "${PBS_APT_PACKAGES[@]}"
    if pbs_installed && [[ $(cat "$PBS_STAMP") == "$id" ]]; then
        note "OpenPBS ${id:0:12} already installed in $PBS_EXEC"
        return 0
    fi
    build=$(mktemp -d /var/tmp/openpbs-build.XXXXXX)
    log=$build/build.log
    note "building OpenPBS ${id:0:12} from $src (log: $log)"
    tar -xzf "$src" -C "$build"
    local dir
    dir=$(find "$build" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    # configure compiles in the first `python` on PATH: give it the system one and
    # a PATH without the caller's virtualenv.
    # shellcheck disable=SC2016  # expanded by the inner bash
    if ! (
        cd "$dir" &&
            env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
                LANG=C.UTF-8 PYTHON=/usr/bin/python3 bash -c '
                set -e
                ./autogen.sh
                ./configure --prefix="$1" PYTHON=/usr/bin/python3
                make -j"$(nproc)"
                rm -f "$1/.jobstrap-build"
                make install
            ' build "$PBS_EXEC"
    ) >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "OpenPBS build failed (log: $log)"
    fi
    # pbs_postinstall's work that the cluster needs: the setuid helpers.
    chmod 4755 "$PBS_EXEC/sbin/pbs_iff" "$PBS_EXEC/sbin/pbs_rcp" 2>/dev/null || true
    printf '%s\n' "$id" >"$PBS_STAMP"
    rm -rf "$build"
    note "OpenPBS built and installed in $PBS_EXEC in $(elapsed_since "$t0") s"
}

# ---------------------------------------------------------------- up / down

pbs_home() {
    printf '%s' "$ROOT/pbs/$1"
}

# write_pbs_conf FILE HOST SERVER SCHED COMM MOM: one host's pbs.conf.
write_pbs_conf() {
    local file=$1 host=$2
    cat >"$file" <<CONF
$PBS_CONF_MARKER
PBS_SERVER=head
PBS_START_SERVER=$3
PBS_START_SCHED=$4
PBS_START_COMM=$5
PBS_START_MOM=$6
PBS_EXEC=$PBS_EXEC
PBS_HOME=$(pbs_home "$host")
PBS_MOM_NODE_NAME=$host
PBS_CORE_LIMIT=unlimited
PBS_SCP=/usr/bin/scp
CONF
    chmod 644 "$file"
}

# pbs_on HOST CMD...: CMD on HOST with that host's pbs.conf and a clean environment.
pbs_on() {
    local host=$1
    shift
    start_daemon "$host" env PBS_CONF_FILE="$ROOT/pbs/$host.conf" "$@"
}

pbs_server_ready() {
    in_host head "$PBS_EXEC/bin/qstat" -B
}

# The moms of every compute node are free (prints pbsnodes' view).
pbs_nodes_free() {
    local out n
    out=$(in_host head "$PBS_EXEC/bin/pbsnodes" -a 2>&1) || return 1
    for n in $(compute_nodes); do
        awk -v n="$n" '$0 == n { found = 1; next } found && /^[^ \t]/ { exit 1 }
            found && /state = / { exit !($3 == "free") } END { exit !found }' <<<"$out" || return 1
    done
}

# Bring PBS up on the running hosts (called by `up` when OpenPBS is installed).
ensure_pbs() {
    local t0 n cpus mem arrays
    t0=$(now)
    if [[ -e $PBS_CONF ]] && ! grep -qxF "$PBS_CONF_MARKER" "$PBS_CONF"; then
        die "$PBS_CONF exists and was not written by this script; move it away first"
    fi
    mkdir -p "$ROOT/pbs"
    # Clients (qsub, qstat, ...) on every host read /etc/pbs.conf; daemons get their
    # host's own file (its PBS_HOME, what to start) through PBS_CONF_FILE.
    write_pbs_conf "$PBS_CONF" head 0 0 0 0
    write_pbs_conf "$ROOT/pbs/head.conf" head 1 1 1 0
    for n in $(compute_nodes); do
        write_pbs_conf "$ROOT/pbs/$n.conf" "$n" 0 0 0 1
    done
    # An rsh for MPI launchers that know no PBS (the mpich wheel's hydra): PBS's
    # pbs_tmrsh starts the command through the job's TM, but without the remote shell
    # rsh implies, and hydra quotes the command for one.
    mkdir -p "$ROOT/pbs/bin"
    cat >"$ROOT/pbs/bin/rsh" <<RSH
#!/bin/sh
# rsh HOST COMMAND...: COMMAND through a shell on HOST, inside the PBS job.
host=\$1
shift
exec $PBS_EXEC/bin/pbs_tmrsh "\$host" /bin/sh -c "\$*"
RSH
    chmod 755 "$ROOT/pbs/bin/rsh"
    if pbs_server_ready >/dev/null 2>&1; then
        note "PBS already running"
        return 0
    fi
    # First start: pbs_init.d runs pbs_habitat (PBS_HOME, PBS's PostgreSQL datastore).
    pbs_on head "$PBS_EXEC/libexec/pbs_init.d" start >>"$ROOT/log/pbs-head.log" 2>&1 ||
        { tail -n 20 "$ROOT/log/pbs-head.log" >&2; die "PBS server did not start"; }
    wait_for 60 "pbs_server" pbs_server_ready || die "pbs_server does not answer"
    read -r cpus mem arrays < <(clusterdef node-limits)
    local qmgr=(
        # Fast for tests: qdel and walltime kills 10 s sooner, history for qstat -x.
        "set server job_history_enable = True"
        "set queue workq kill_delay = 1"
        "set server scheduler_iteration = 10"
        # Sessions on head run as root; the cluster is a throwaway.
        "set server acl_roots = root"
        "set server max_array_size = $arrays"
    )
    for n in $(compute_nodes); do
        qmgr+=("create node $n Mom=$n")
        qmgr+=("set node $n resources_available.ncpus = $cpus")
        qmgr+=("set node $n resources_available.mem = ${mem}mb")
    done
    local c
    for c in "${qmgr[@]}"; do
        in_host head "$PBS_EXEC/bin/qmgr" -c "$c" >>"$ROOT/log/pbs-head.log" 2>&1 ||
            die "qmgr -c '$c' failed (see $ROOT/log/pbs-head.log)"
    done
    for n in $(compute_nodes); do
        pbs_on "$n" "$PBS_EXEC/libexec/pbs_habitat" >>"$ROOT/log/pbs-$n.log" 2>&1 ||
            { tail -n 20 "$ROOT/log/pbs-$n.log" >&2; die "pbs_habitat failed on $n"; }
        # Poll fast (walltime kills and exits seen within 2 s); the run directory is
        # shared, so output files are copied, never sent with scp.
        cat >"$(pbs_home "$n")/mom_priv/config" <<MOM
\$clienthost head
\$min_check_poll 1
\$max_check_poll 2
\$usecp *:/ /
MOM
        pbs_on "$n" "$PBS_EXEC/libexec/pbs_init.d" start >>"$ROOT/log/pbs-$n.log" 2>&1 ||
            { tail -n 20 "$ROOT/log/pbs-$n.log" >&2; die "pbs_mom did not start on $n"; }
    done
    if ! wait_for "$UP_TIMEOUT" "PBS nodes free" pbs_nodes_free; then
        in_host head "$PBS_EXEC/bin/pbsnodes" -a >&2 || true
        die "PBS nodes are not free"
    fi
    note "PBS up in $(elapsed_since "$t0") s"
}

# Remove what `up` wrote outside the state directory (processes go with the hosts).
pbs_down() {
    if [[ -f $PBS_CONF ]] && grep -qxF "$PBS_CONF_MARKER" "$PBS_CONF"; then
        rm -f "$PBS_CONF"
    fi
}

pbs_status() {
    pbs_installed || return 0
    local ok=0
    pbs_server_ready >/dev/null 2>&1 || { echo "pbs_server on head: not answering"; ok=1; }
    pbs_nodes_free || { echo "PBS nodes not free"; ok=1; }
    return "$ok"
}
