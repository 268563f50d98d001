#!/usr/bin/env bash
# A multi-node Ray cluster on this machine: a head with 0 CPUs and worker nodes of the
# given sizes, each a separate `ray start` process with its own ports, all on 127.0.0.1.
#
#   cluster/local-cluster.sh start [CPUS_OF_WORKER_1 CPUS_OF_WORKER_2 ...]   (default: 1 1;
#                                            `start 0`: the head alone, workers join with add)
#   cluster/local-cluster.sh add CPUS        a worker node joins the running cluster
#   cluster/local-cluster.sh remove NODE     worker NODE (e.g. worker-2) leaves: SIGTERM, as a
#                                            spot VM's shutdown sends (Ray drains it), then KILL
#   cluster/local-cluster.sh status
#   cluster/local-cluster.sh stop
#
# Environment: BULKSCRIBE_CLUSTER_DIR (state and logs, default /tmp/bulkscribe-cluster),
# RAY_HEAD_PORT (default 6390), RAY_DASHBOARD_PORT (default 8275), RAY_NODE_PORT_BASE
# (default 20000: node N's ports start at BASE + 1000*N). Token authentication
# stays on: the head writes the token under ~/.ray, and nodes and clients use it.
# `stop` ends only the nodes this script started, never another Ray on the machine.
set -euo pipefail

DIR=${BULKSCRIBE_CLUSTER_DIR:-/tmp/bulkscribe-cluster}
HEAD_PORT=${RAY_HEAD_PORT:-6390}
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8275}
NODE_PORT_BASE=${RAY_NODE_PORT_BASE:-20000}
RAY=${RAY:-ray}
export RAY_AUTH_MODE=token

# Ports of node N (0 is the head) start at NODE_PORT_BASE + 1000*N, so nodes never collide.
node_ports() {
  local base=$((NODE_PORT_BASE + 1000 * $1))
  echo "--node-manager-port=$base --object-manager-port=$((base + 1)) \
--dashboard-agent-listen-port=$((base + 2)) --dashboard-agent-grpc-port=$((base + 3)) \
--metrics-export-port=$((base + 4)) --runtime-env-agent-port=$((base + 5)) \
--min-worker-port=$((base + 100)) --max-worker-port=$((base + 999))"
}

start_node() {  # name, ray start arguments...
  local name=$1; shift
  # setsid: the node gets its own process group, which `stop` ends as a whole.
  setsid "$RAY" start --block --disable-usage-stats --node-ip-address=127.0.0.1 "$@" \
    >"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/$name.pid"
}

stop_node() {  # pid file, seconds to wait after SIGTERM before SIGKILL
  local pid
  pid=$(cat "$1")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 $((${2:-15} * 2))); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$1"
}

wait_for_nodes() {  # expected node count
  for _ in $(seq 1 60); do
    local alive
    alive=$(timeout 20 python - "$HEAD_PORT" <<'PY' 2>/dev/null || echo 0
import sys, ray
ray.init(address=f"127.0.0.1:{sys.argv[1]}", logging_level="ERROR")
print(sum(n["Alive"] for n in ray.nodes()))
PY
)
    [ "$alive" -ge "$1" ] && return 0
    sleep 1
  done
  echo "nodes did not come up; logs in $DIR" >&2
  return 1
}

case "${1:-}" in
  start)
    shift
    workers=("$@"); [ ${#workers[@]} -gt 0 ] || workers=(1 1)
    mkdir -p "$DIR"
    if ls "$DIR"/*.pid >/dev/null 2>&1; then echo "already running (see $0 status); stop it first" >&2; exit 1; fi
    # shellcheck disable=SC2046
    start_node head --head --num-cpus=0 --port="$HEAD_PORT" --dashboard-host=127.0.0.1 \
      --dashboard-port="$DASHBOARD_PORT" --ray-client-server-port=$((HEAD_PORT + 1)) $(node_ports 0)
    wait_for_nodes 1
    # One at a time: nodes on one host share the head's session folder, and Ray names
    # each node's Unix sockets when it starts (raylet, raylet.1, ...); two at once collide.
    i=1
    for cpus in "${workers[@]}"; do
      [ "$cpus" != 0 ] || continue
      # shellcheck disable=SC2046
      start_node "worker-$i" --address="127.0.0.1:$HEAD_PORT" --num-cpus="$cpus" $(node_ports "$i")
      wait_for_nodes $((i + 1))
      i=$((i + 1))
    done
    echo "head 127.0.0.1:$HEAD_PORT, workers with ${workers[*]} CPUs (0: none)"
    echo "dashboard and job submission: http://127.0.0.1:$DASHBOARD_PORT"
    ;;
  add)
    [ $# -eq 2 ] || { echo "usage: $0 add CPUS" >&2; exit 2; }
    [ -e "$DIR/head.pid" ] || { echo "not running (see $0 start)" >&2; exit 1; }
    i=1
    while [ -e "$DIR/worker-$i.pid" ]; do i=$((i + 1)); done
    alive=$(ls "$DIR"/*.pid | wc -l)
    # shellcheck disable=SC2046
    start_node "worker-$i" --address="127.0.0.1:$HEAD_PORT" --num-cpus="$2" $(node_ports "$i")
    wait_for_nodes $((alive + 1))
    echo "worker-$i joined with $2 CPUs"
    ;;
  remove)
    [ $# -eq 2 ] || { echo "usage: $0 remove NODE" >&2; exit 2; }
    f="$DIR/$2.pid"
    case "$2" in worker-*) ;; *) echo "only worker nodes can be removed" >&2; exit 2;; esac
    [ -e "$f" ] || { echo "no node $2 (see $0 status)" >&2; exit 1; }
    stop_node "$f"
    echo "$2 left"
    ;;
  status)
    for f in "$DIR"/*.pid; do
      [ -e "$f" ] || { echo "not running"; exit 0; }
      pid=$(cat "$f"); name=$(basename "$f" .pid)
      if kill -0 "$pid" 2>/dev/null; then echo "$name: running (pid $pid)"; else echo "$name: dead"; fi
    done
    ;;
  stop)
    # The whole cluster goes: no node is left to drain work to.
    for f in "$DIR"/worker-*.pid "$DIR"/head.pid; do
      [ -e "$f" ] || continue
      stop_node "$f" 3
    done
    echo "stopped"
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
