#!/bin/sh
# Drive the oncache compose lab (run from anywhere; uses the docker-compose.yml next to it).
#
#   lab.sh build                      build the node image (node/build-image.sh)
#   lab.sh up                         docker-compose up -d, wait until the nodes are up and in the
#                                     Swarm (their entrypoints form it: node1 manager, node2/3 workers)
#   lab.sh swarm                      form the Swarm anew (after a node was recreated, say)
#   lab.sh net NAME VNI SUBNET [docker network create flags...]
#                                     attachable oncache network through Swarm (made on node1, the
#                                     manager: -d oncache:latest -o oncache.vni=VNI --subnet SUBNET)
#   lab.sh rmnet NAME                 remove it
#   lab.sh exec NODE CMD...           docker-compose exec -T NODE CMD...
#   lab.sh check                      end-to-end check (oncache + Docker overlay), see README
#   lab.sh down                       docker-compose down -v (removes containers, network, volumes)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
NODES="node1 node2 node3"
dc() { docker-compose "$@"; }
x() { n=$1; shift; dc exec -T "$n" "$@"; }
ip_of() { case $1 in node1) echo 10.98.0.11;; node2) echo 10.98.0.12;; node3) echo 10.98.0.13;; esac; }

wait_ready() {
    for n in $NODES; do
        i=0
        until x "$n" test -e /run/lab-ready 2>/dev/null; do
            i=$((i+1)); [ $i -lt 120 ] || { echo "$n not ready" >&2; dc logs "$n" >&2; exit 1; }
            sleep 0.5
        done
    done
}

swarm() {
    x node1 docker swarm leave --force >/dev/null 2>&1 || true
    x node1 docker swarm init --advertise-addr 10.98.0.11 --listen-addr 10.98.0.11:2377 >/dev/null
    token=$(x node1 docker swarm join-token -q worker | tr -d '\r')
    for n in node2 node3; do
        x "$n" docker swarm leave --force >/dev/null 2>&1 || true
        x "$n" docker swarm join --advertise-addr "$(ip_of "$n")" --token "$token" 10.98.0.11:2377 >/dev/null
    done
    x node1 docker node ls
}

# Until node1 lists all three nodes Ready.
wait_swarm() {
    i=0
    until [ "$(x node1 docker node ls --format '{{.Status}}' 2>/dev/null | grep -c Ready)" = 3 ]; do
        i=$((i+1)); [ $i -lt 60 ] || { echo "the Swarm did not form" >&2; x node1 docker node ls >&2; exit 1; }
        sleep 0.5
    done
    x node1 docker node ls
}

net() {
    name=$1; vni=$2; subnet=$3; shift 3
    x node1 docker network create -d oncache:latest --attachable -o oncache.vni="$vni" \
        --subnet "$subnet" "$@" "$name" >/dev/null
    echo "$name: oncache:latest, VNI $vni, $subnet, every node (Swarm)"
}

cmd=${1:-help}; [ $# -gt 0 ] && shift
case $cmd in
    build) exec "$here/node/build-image.sh" ;;
    up) dc up -d; wait_ready; wait_swarm ;;
    swarm) swarm ;;
    net) net "$@" ;;
    rmnet) x node1 docker network rm "$1" ;;
    exec) x "$@" ;;
    check) exec "$here/check.sh" ;;
    down) dc down -v --remove-orphans ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac
