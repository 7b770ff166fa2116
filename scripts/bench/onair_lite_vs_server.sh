#!/usr/bin/env bash
# On-air CPU per station with Milvus Lite and with a real Milvus server (docs/benchmarks.md,
# session 4). Run as root from the repository root: milvus-server binds every interface, so the
# whole run happens in a private network namespace with only loopback.
#   sudo unshare -n bash scripts/bench/onair_lite_vs_server.sh [OUT_DIR]
# MINUTES (default 5) and STATIONS (default 8) change the stream's length and the station count.
# Needs the warzone2100-music and wesnoth-1.16-music packages and .venv (scripts/setup --test).
set -euo pipefail
out=${1:-/tmp/tt-onair}
mkdir -p "$out"
ip link set lo up
py=.venv/bin/python
catalog=/usr/share/games/warzone2100/music/albums/
W=/usr/share/games/wesnoth/1.16/data/core/music
unknown=("$W/battle.ogg" "$W/elf-land.ogg" "$W/knolls.ogg" "$W/loyalists.ogg" "$W/wanderer.ogg"
         "$W/northerners.ogg" "$W/frantic.ogg" "$W/suspense.ogg")
bench=(-m tunetrace.evaluation.live --minutes "${MINUTES:-5}" --stations "${STATIONS:-8}" --seed 6 --realtime --unknown "${unknown[@]}")
export PYTHONPATH=daemon

server_cpu_s() {  # CPU seconds of the milvus-server process tree on port 19530
  $py - <<'PY'
import os
tick, info = os.sysconf("SC_CLK_TCK"), {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    info[int(pid)] = (cmd, int(stat[1]), (int(stat[11]) + int(stat[12])) / tick)
stack = [p for p, (cmd, _, _) in info.items() if b"milvus-server" in cmd and b"--proxy-port 19530" in cmd]
total = 0.0
while stack:
    pid = stack.pop()
    total += info[pid][2]
    stack.extend(child for child, (_, parent, _) in info.items() if parent == pid)
print(f"{total:.2f}")
PY
}

printf 'data_dir: %s/lite\nencoder:\n  name: fingerprint\n' "$out" > "$out/lite.yaml"
printf 'data_dir: %s/server\nencoder:\n  name: fingerprint\nmilvus:\n  uri: http://127.0.0.1:19530\n  timeout_s: 60\n' \
  "$out" > "$out/server.yaml"

echo "== Milvus Lite"
$py -m tunetrace ingest -q -c "$out/lite.yaml" "$catalog"
$py "${bench[@]}" -c "$out/lite.yaml" --json "$out/lite.json" > "$out/lite.log"

echo "== milvus-server"
server_data=$(mktemp -d)
.venv/bin/milvus-server --data "$server_data" --proxy-port 19530 > "$out/milvus-server.log" 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null || true' EXIT
until $py -c "from pymilvus import MilvusClient; MilvusClient('http://127.0.0.1:19530', timeout=3).list_collections()" 2>/dev/null; do
  sleep 2
done
$py -m tunetrace ingest -q -c "$out/server.yaml" "$catalog"
sleep 20
idle0=$(server_cpu_s); sleep 60; idle1=$(server_cpu_s)
busy0=$(server_cpu_s); started=$(date +%s.%N)
$py "${bench[@]}" -c "$out/server.yaml" --json "$out/server.json" > "$out/server.log"
busy1=$(server_cpu_s); ended=$(date +%s.%N)
$py - "$idle0" "$idle1" "$busy0" "$busy1" "$started" "$ended" "$out/server.json" <<'PY'
import json, sys
idle0, idle1, busy0, busy1, started, ended = map(float, sys.argv[1:7])
result = json.load(open(sys.argv[7]))
station_s = result["stream_s"] * result["stations"]
extra = (busy1 - busy0) - (idle1 - idle0) / 60.0 * (ended - started)
print(f"server idle: {(idle1 - idle0) / 60.0:.1%} of a core; server per station: {extra / station_s:.2%}; "
      f"tunetrace per station: {result['cpu_core_share_per_station']:.2%}")
PY
for store in lite server; do
  echo "$store: $(grep -o '"cpu_core_share_per_station": [0-9.]*' "$out/$store.log")"
done
