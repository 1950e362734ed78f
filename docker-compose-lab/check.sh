#!/bin/sh
# End-to-end check of a running lab (after `lab.sh up`): an oncache network on all three nodes,
# ping + iperf3 between containers on node1 and node2, fast-path hits in `oncache stats` on both,
# then the same over an attachable Docker (swarm) overlay. Removes what it created; exit 0 = pass.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
x() { n=$1; shift; docker-compose exec -T "$n" "$@" | tr -d '\r'; }
IMG=oncache-test:latest
fail() { echo "FAIL: $*" >&2; exit 1; }
cleanup() {
    for n in node1 node2; do x "$n" docker rm -f chk-oc chk-ov >/dev/null 2>&1 || true; done
    x node1 docker network rm chk-oc chk-ov >/dev/null 2>&1 || true
}
trap cleanup EXIT
ip_in() { x "$1" docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$2"; }
hits() { x "$1" oncache stats | awk -v p="$2" '$1 == p { print $2 }'; }

echo "== oncache network through Swarm (oncache:latest, VNI 4242)"
"$here/lab.sh" net chk-oc 4242 10.203.0.0/24
x node1 docker run -d --name chk-oc --network chk-oc --pull=never $IMG sh -c 'iperf3 -s -D; exec sleep 100000' >/dev/null
x node2 docker run -d --name chk-oc --network chk-oc --pull=never $IMG sleep 100000 >/dev/null
a=$(ip_in node1 chk-oc); echo "node1 container: $a"
e1=$(hits node1 egress_fast); e2=$(hits node2 egress_fast)
x node2 docker exec chk-oc ping -c 3 -W 2 "$a" || fail "ping over oncache"
x node2 docker exec chk-oc iperf3 -c "$a" -t 3 -R | grep -E 'sender|receiver' || fail "iperf3 over oncache"
x node2 docker exec chk-oc iperf3 -c "$a" -t 3 | grep -E 'sender|receiver' || fail "iperf3 over oncache"
echo "-- node1 oncache stats"; x node1 oncache stats
echo "-- node2 oncache stats"; x node2 oncache stats
f1=$(hits node1 egress_fast); f2=$(hits node2 egress_fast)
[ "$f1" -gt "$e1" ] && [ "$f2" -gt "$e2" ] || fail "no fast-path hits (node1 $e1->$f1, node2 $e2->$f2)"
echo "fast path taken: egress_fast hits node1 +$((f1-e1)), node2 +$((f2-e2))"

echo "== Docker overlay (attachable, swarm)"
x node1 docker network create -d overlay --attachable --subnet 10.204.0.0/24 chk-ov >/dev/null
x node1 docker run -d --name chk-ov --network chk-ov --pull=never $IMG sh -c 'iperf3 -s -D; exec sleep 100000' >/dev/null
x node2 docker run -d --name chk-ov --network chk-ov --pull=never $IMG sleep 100000 >/dev/null
b=$(ip_in node1 chk-ov); echo "node1 container: $b"
x node2 docker exec chk-ov ping -c 3 -W 2 "$b" || fail "ping over Docker overlay"
x node2 docker exec chk-ov iperf3 -c "$b" -t 3 | grep -E 'sender|receiver' || fail "iperf3 over Docker overlay"
echo PASS
