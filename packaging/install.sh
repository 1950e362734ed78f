#!/usr/bin/env bash
# Builds, installs and starts oncache so that `docker network create -d oncache` works.
#   packaging/install.sh            build, install, start (and start Docker if it is not running)
#   packaging/install.sh stop       stop the daemon (the overlay's links stay up)
#   packaging/install.sh uninstall  stop it and remove the binary, unit and its links
#   packaging/install.sh image      import the demo image oncache-demo:latest (busybox, iperf3,
#                                   sockperf) into the Docker that DOCKER_HOST names; no registry
# Run as root from a checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=/usr/local/bin/oncache
UNIT=/etc/systemd/system/oncache.service
PIDFILE=/run/oncache.pid
LOG=/var/log/oncache.log
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
systemd() { [ -d /run/systemd/system ]; }

stop() {
    if systemd && systemctl is-active -q oncache 2>/dev/null; then systemctl stop oncache; fi
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        kill -TERM "$(cat "$PIDFILE")"
        for _ in $(seq 50); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$PIDFILE"
}

case "${1:-install}" in
stop) stop; echo "oncache stopped"; exit 0 ;;
uninstall)
    stop
    if systemd; then systemctl disable -q oncache 2>/dev/null || true; fi
    [ -x "$BIN" ] && "$BIN" uninstall
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
install) ;;
*) echo "usage: $0 [install|stop|uninstall|image]" >&2; exit 2 ;;
esac

packaging/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p oncache
stop
install -m 0755 target/release/oncache "$BIN"

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
