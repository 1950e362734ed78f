#!/bin/sh
# Entrypoint (PID 1) of an oncache lab node: its own dockerd with oncache as its managed plugin
# (oncache:latest, installed by packaging/install.sh plugin, as on a real Swarm node).
#   ADDR=10.98.0.11                 this node's underlay address
#   SWARM=manager | SWARM=join:IP   init the Swarm here, or join the manager at IP (unset: neither)
#                                   (the plugin learns its peers from Swarm's node discovery)
#   DOCKERD_ARGS                    extra dockerd flags (default: --storage-driver=overlay2)
# The manager serves its worker join token on ADDR:2378 (busybox httpd) for the workers to fetch:
# no shared volume, so `docker-compose down` leaves nothing. /run/lab-ready marks a node that is
# up and in the Swarm. On SIGTERM/SIGINT it stops dockerd (which stops the plugin) by PID, and exits.
set -u
log() { echo "entrypoint: $*" >&2; }

# Not privileged (see docker-compose.yml): /sys and the cgroup v1 tree come read-only.
mount -o remount,rw /sys 2>/dev/null || log "cannot remount /sys rw"
mount -o remount,bind,rw /proc/sys 2>/dev/null || log "cannot remount /proc/sys rw"
for d in /sys/fs/cgroup /sys/fs/cgroup/*; do
    mountpoint -q "$d" && { mount -o remount,bind,rw "$d" 2>/dev/null || log "cannot remount $d rw"; }
done

# Own bpffs instance: this node's pins are invisible to the machine and the other nodes.
mkdir -p /sys/fs/bpf
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || log "cannot mount bpffs (fast path off)"
mkdir -p /run/docker/plugins /var/lib/docker /var/lib/oncache

# shellcheck disable=SC2086
dockerd ${DOCKERD_ARGS:---storage-driver=overlay2} >/var/log/dockerd.log 2>&1 &
DOCKERD_PID=$!

TOKEN_PID=""
stop() {
    [ -n "$TOKEN_PID" ] && kill -TERM "$TOKEN_PID" 2>/dev/null
    log "stopping dockerd ($DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    i=0; while kill -0 "$DOCKERD_PID" 2>/dev/null && [ $i -lt 80 ]; do sleep 0.25; i=$((i+1)); done
    exit 0
}
trap stop TERM INT

i=0
until docker info >/dev/null 2>&1; do
    i=$((i+1))
    if [ $i -gt 120 ] || ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
        log "dockerd did not come up:"; tail -20 /var/log/dockerd.log >&2; break
    fi
    sleep 0.5
done
docker import /opt/lab/oncache-test.tar oncache-test:latest >/dev/null && log "imported oncache-test:latest"
# The managed plugin, built from the binary and packaging/ of the checkout the image was made
# from; scope global (Swarm), underlay = the interface of the default route.
if ONCACHE_BIN=/usr/local/bin/oncache /opt/oncache/packaging/install.sh plugin >/var/log/oncache-install.log 2>&1; then
    log "$(tail -1 /var/log/oncache-install.log)"
else
    log "install.sh plugin failed:"; tail -20 /var/log/oncache-install.log >&2
fi

case ${SWARM:-} in
    manager)
        docker swarm init --advertise-addr "$ADDR" --listen-addr "$ADDR:2377" >/dev/null &&
            mkdir -p /run/lab-swarm &&
            docker swarm join-token -q worker > /run/lab-swarm/worker-token &&
            log "Swarm manager at $ADDR:2377" || log "swarm init failed"
        busybox httpd -f -p "$ADDR:2378" -h /run/lab-swarm &
        TOKEN_PID=$!
        ;;
    join:*)
        mgr=${SWARM#join:}
        i=0
        # The manager may still be starting, or be a new one since the last `up`: retry.
        # (busybox nc, not busybox wget: Debian's static busybox wget segfaults here)
        until token=$(printf 'GET /worker-token HTTP/1.0\r\n\r\n' | busybox nc "$mgr" 2378 2>/dev/null |
            grep '^SWMTKN-' | tr -d '\r') && [ -n "$token" ] &&
            docker swarm join --advertise-addr "$ADDR" --token "$token" "$mgr:2377" >/dev/null 2>&1; do
            i=$((i+1)); [ $i -lt 120 ] || { log "could not join the Swarm at $mgr"; break; }
            sleep 1
        done
        [ $i -lt 120 ] && log "joined the Swarm at $mgr"
        ;;
esac
touch /run/lab-ready
log "ready"

# Wait for a signal or for dockerd to die; `wait` returns early when a trapped signal comes.
while kill -0 "$DOCKERD_PID" 2>/dev/null; do
    sleep 1 &
    wait $!
done
log "dockerd exited"; tail -5 /var/log/dockerd.log >&2
stop
