#!/usr/bin/env bash
# Builds, installs and starts oncache so that `docker network create -d oncache` works, and
# installs it as the CNI plugin `oncache` for containerd/nerdctl and podman (see CNI_DIR).
#   packaging/install.sh            build, install, start (and start Docker if it is not running)
#   packaging/install.sh stop       stop the daemon (the overlay's links stay up)
#   packaging/install.sh uninstall  stop it and remove the binary, unit, CNI plugin and its links
#   packaging/install.sh image      import the demo image oncache-demo:latest (busybox, iperf3,
#                                   sockperf) into the Docker that DOCKER_HOST names; no registry
#   packaging/install.sh plugin [SETTING=VALUE...]
#                                   build the managed plugin (packaging/plugin/) from this checkout
#                                   and install and enable it as oncache:latest in the Docker that
#                                   DOCKER_HOST names (Swarm needs it), offline; an installed one is
#                                   replaced (disable -f, rm -f, create, set, enable), keeping its
#                                   settings. SETTINGs go to `docker plugin set`: ONCACHE_PEERS=...,
#                                   RUST_LOG=debug, state.source=/path, ... (see config.json).
#                                   ONCACHE_BIN=PATH: use that binary instead of building one;
#                                   DOCKER_PLUGINS_DIR: dockerd's <exec-root>/plugins, where the
#                                   plugin's socket shows [/run/docker/plugins].
# Run as root from a checkout.
set -euo pipefail
if [ -n "${ONCACHE_BIN:-}" ]; then ONCACHE_BIN=$(realpath -m "$ONCACHE_BIN"); fi
cd "$(dirname "$0")/.."
BIN=/usr/local/bin/oncache
UNIT=/etc/systemd/system/oncache.service
PIDFILE=/run/oncache.pid
LOG=/var/log/oncache.log
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
systemd() { [ -d /run/systemd/system ]; }
# The CNI plugin folder of Debian's runtimes and plugins (created if absent), and the folders
# nerdctl prefers to it (it uses the first that exists): the plugin goes into those only when they
# already exist; creating one would hide Debian's plugins from nerdctl.
CNI_DIR=/usr/lib/cni
CNI_FIRST=(/opt/cni/bin /usr/local/libexec/cni /usr/local/lib/cni /usr/libexec/cni)
cni_install() {
    local d
    install -d -m 0755 "$CNI_DIR"
    ln -sfn "$BIN" "$CNI_DIR/oncache"
    for d in "${CNI_FIRST[@]}"; do
        if [ -d "$d" ]; then ln -sfn "$BIN" "$d/oncache"; fi
    done
    echo "oncache: CNI plugin installed as $CNI_DIR/oncache (try: oncache cni add-network oc1 --subnet 10.220.0.0/24)"
}
cni_uninstall() {
    local d
    for d in "$CNI_DIR" "${CNI_FIRST[@]}"; do
        if [ -L "$d/oncache" ] && [ "$(readlink "$d/oncache")" = "$BIN" ]; then rm -f "$d/oncache"; fi
    done
}

stop() {
    if systemd && systemctl is-active -q oncache 2>/dev/null; then systemctl stop oncache; fi
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        kill -TERM "$(cat "$PIDFILE")"
        for _ in $(seq 50); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$PIDFILE"
}

# The managed plugin: packaging/plugin/config.json + a rootfs from packaging/plugin/build-rootfs.sh.
plugin_install() {
    local name=${ONCACHE_PLUGIN:-oncache:latest} s bin
    for s in "$@"; do
        case $s in
        [A-Za-z]*=*) ;;
        *) echo "plugin: settings are NAME=VALUE (env) or MOUNT.source=PATH, not: $s" >&2; exit 2 ;;
        esac
    done
    if [ -n "${ONCACHE_BIN:-}" ]; then
        bin=$ONCACHE_BIN
        [ -x "$bin" ] || { echo "plugin: ONCACHE_BIN=$bin is not an executable" >&2; exit 1; }
        # Only what the rootfs is made of (the build tools are not needed).
        local need=()
        command -v iptables >/dev/null || need+=(iptables)
        command -v ip >/dev/null || need+=(iproute2)
        command -v docker >/dev/null || need+=(docker.io)
        if [ ${#need[@]} -gt 0 ]; then
            echo "oncache: installing Debian packages: ${need[*]}"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        fi
    else
        packaging/deps.sh
        export PATH="$HOME/.cargo/bin:$PATH"
        cargo build --release --locked -p oncache
        bin=$PWD/target/release/oncache
    fi
    docker version >/dev/null 2>&1 || { echo "plugin: no Docker answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}" >&2; exit 1; }
    if [ -z "${DOCKER_HOST:-}" ] && { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null ||
            { systemd && systemctl is-active -q oncache 2>/dev/null; }; }; then
        echo "plugin: the unmanaged oncache daemon runs here (its state is the plugin's): $0 stop first" >&2
        exit 1
    fi
    # The plugin pins its programs in the host's bpffs (bind-mounted): it must be there.
    if ! awk '$5 == "/sys/fs/bpf" && $0 ~ / - bpf / { f=1 } END { exit !f }' /proc/self/mountinfo; then
        mount -t bpf -o nosuid,nodev,noexec bpf /sys/fs/bpf
        echo "oncache: mounted bpffs on /sys/fs/bpf"
    fi
    # The netfilter mount's source exists once conntrack is loaded (Docker's own rules load it).
    [ -d /proc/sys/net/netfilter ] || modprobe nf_conntrack 2>/dev/null || true
    [ -d /proc/sys/net/netfilter ] || { echo "plugin: no /proc/sys/net/netfilter: load nf_conntrack (modprobe nf_conntrack)" >&2; exit 1; }

    PLUGIN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/oncache-plugin.XXXXXX")
    trap 'rm -rf "$PLUGIN_DIR"' EXIT
    cp packaging/plugin/config.json "$PLUGIN_DIR/config.json"
    packaging/plugin/build-rootfs.sh "$PLUGIN_DIR/rootfs" "$bin" >/dev/null

    # Replacing an installed plugin: keep what was set on it (env values, mount sources).
    local old=()
    if docker plugin inspect "$name" >/dev/null 2>&1; then
        mapfile -t old < <(docker plugin inspect -f \
            '{{range .Settings.Env}}{{println .}}{{end}}{{range .Config.Mounts}}{{if .Settable}}{{.Name}}.source={{.Source}}{{println}}{{end}}{{end}}' "$name" | grep .)
        docker plugin disable -f "$name" >/dev/null 2>&1 || true
        docker plugin rm -f "$name" >/dev/null
        echo "oncache: removed the installed $name (its settings are kept)"
    fi
    docker plugin create "$name" "$PLUGIN_DIR" >/dev/null
    rm -rf "$PLUGIN_DIR"
    # Only what the new config still has can be set.
    local known=() sets=()
    read -r -a known < <(docker plugin inspect -f \
        '{{range .Config.Env}}{{if .Settable}}{{.Name}} {{end}}{{end}}{{range .Config.Mounts}}{{if .Settable}}{{.Name}}.source {{end}}{{end}}' "$name")
    for s in "${old[@]}"; do
        if [[ " ${known[*]} " == *" ${s%%=*} "* ]]; then sets+=("$s"); fi
    done
    sets+=("$@")
    if [ ${#sets[@]} -gt 0 ]; then
        docker plugin set "$name" "${sets[@]}"
    fi
    # A bind mount's source must exist: the state folder (the host's /var/lib/oncache by default).
    local state=/var/lib/oncache
    for s in "${sets[@]}"; do
        case $s in state.source=*) state=${s#state.source=} ;; esac
    done
    mkdir -p "$state" && chmod 0700 "$state"
    if ! docker plugin enable "$name" >/dev/null; then
        echo "plugin: $name did not start; its output is in dockerd's log" >&2
        exit 1
    fi
    docker plugin ls
    local id sock st fast
    id=$(docker plugin inspect -f '{{.Id}}' "$name")
    sock=${DOCKER_PLUGINS_DIR:-/run/docker/plugins}/$id/oncache.sock
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    if [ ! -S "$sock" ]; then
        echo "oncache: $name is enabled; its socket is not at $sock (set DOCKER_PLUGINS_DIR to dockerd's <exec-root>/plugins to see its status)"
        return 0
    fi
    # From its folder: a socket path may be at most 107 bytes, and <exec-root>/plugins/<id>/ is long.
    if ! st=$(cd "$(dirname "$sock")" && "$bin" status --json --socket oncache.sock); then
        echo "plugin: $name is enabled but does not answer on $sock; its output is in dockerd's log" >&2
        exit 1
    fi
    fast=$(sed -n 's/^ *"fastpath": "\(.*\)",$/\1/p' <<<"$st")
    case $fast in
    on*) echo "oncache: $name enabled, fast path ON ($fast)" ;;
    *) echo "oncache: $name enabled, fast path OFF, serving the slow path only: $fast" ;;
    esac
    echo "status: $(basename "$bin") status --socket $sock"
    echo "try: docker network create -d $name --subnet 10.201.0.0/24 n1"
    # Swarm tells a plugin enabled on a node already in a swarm about that node only; it
    # announces the others when dockerd (re)starts or when they join.
    if [ "$(docker info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null)" = active ] && grep -q '"peers": \[\]' <<<"$st"; then
        echo "oncache: note: this node is in a Swarm and the plugin knows no other node yet: restart dockerd" \
             "(systemctl restart docker) so that Swarm announces them, or set ONCACHE_PEERS=addr,addr"
    fi
}

case "${1:-install}" in
stop) stop; echo "oncache stopped"; exit 0 ;;
uninstall)
    stop
    if systemd; then systemctl disable -q oncache 2>/dev/null || true; fi
    [ -x "$BIN" ] && "$BIN" uninstall
    cni_uninstall
    rm -f "$UNIT" "$BIN"
    echo "oncache uninstalled (state kept in /var/lib/oncache; remove it to forget networks)"
    exit 0 ;;
image)
    IMAGE=${IMAGE:-oncache-demo:latest}
    need=()
    dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
    command -v iperf3 >/dev/null || need+=(iperf3)
    command -v sockperf >/dev/null || need+=(sockperf)
    if [ ${#need[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    tar=$(mktemp --suffix=.tar)
    trap 'rm -f "$tar"' EXIT
    tests/image/build-rootfs.sh "$tar"
    docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' "$tar" "$IMAGE" >/dev/null
    echo "imported $IMAGE (busybox, iperf3, sockperf)"
    exit 0 ;;
plugin)
    shift
    plugin_install "$@"
    exit 0 ;;
install) ;;
*) echo "usage: $0 [install|stop|uninstall|image|plugin [SETTING=VALUE...]]" >&2; exit 2 ;;
esac

packaging/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p oncache
stop
install -m 0755 target/release/oncache "$BIN"
cni_install

if systemd; then
    install -m 0644 packaging/oncache.service "$UNIT"
    systemctl daemon-reload
    systemctl enable -q --now oncache
    systemctl is-active -q docker || systemctl start docker
    echo "oncache is running (systemctl status oncache; journalctl -u oncache)"
else
    # No systemd (containers, minimal VMs): run the daemon in the background ourselves.
    RUST_LOG="${RUST_LOG:-info}" setsid "$BIN" daemon >>"$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    for _ in $(seq 100); do [ -S /run/docker/plugins/oncache.sock ] && break; sleep 0.1; done
    [ -S /run/docker/plugins/oncache.sock ] || { echo "oncache did not start; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
    if ! docker info >/dev/null 2>&1; then
        setsid dockerd >>/var/log/dockerd.log 2>&1 < /dev/null &
        for _ in $(seq 300); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
        docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
        echo "started dockerd (log /var/log/dockerd.log)"
    fi
    echo "oncache is running as PID $(cat "$PIDFILE") (log $LOG); stop it with: $0 stop"
fi
# Prove the install: what the kernel offers, and whether the daemon runs the fast path.
"$BIN" doctor || true
fast=$("$BIN" status --json | sed -n 's/^ *"fastpath": "\(.*\)",$/\1/p')
case $fast in
on*) echo "oncache: fast path ON ($fast)" ;;
*) echo "oncache: fast path OFF, serving the slow path only: $fast" ;;
esac
echo "try: docker network create -d oncache --subnet 10.201.0.0/24 n1"
