#!/bin/bash
# Replay amplification (issue 10, item 4): CPU a node spends per
# `subscribe since:{offset:0}` on 1,000 x 60 KB of history, and bytes the client gets.
# usage: scripts/repro/replay_cost.sh <gateway binary> [wscat binary]
set -u
BIN=$1
CFG=$(mktemp --suffix=.toml)
printf 'listen = "127.0.0.1:0"\n[namespaces.big]\nhistory_size = 1000\nhistory_ttl_secs = 300\nallow_anonymous = true\n' > "$CFG"
$BIN --config $CFG > /tmp/rm.out 2>/tmp/rm.err &
PID=$!
for i in $(seq 50); do grep -q listening /tmp/rm.out && break; sleep 0.1; done
ADDR=$(grep -o 'listening on [0-9.:]*' /tmp/rm.out | awk '{print $3}')
DATA=$(head -c 60000 /dev/zero | tr '\0' 'a')
printf '{"channel":"big:log","data":"%s"}' "$DATA" > /tmp/rm.body
for i in $(seq 1000); do curl -s -o /dev/null "http://$ADDR/api/publish" -H 'content-type: application/json' --data-binary @/tmp/rm.body; done
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
T=$(getconf CLK_TCK)
C0=$(cpu)
for i in $(seq 10); do
  (echo '{"op":"subscribe","id":1,"channel":"big:log","since":{"offset":0}}'; sleep 1) | timeout 20 ${2:-target/debug/wscat} "ws://$ADDR/ws" 2>/dev/null | wc -c
done > /tmp/rm.sizes
C1=$(cpu)
echo "bytes received per subscribe: $(sort -u /tmp/rm.sizes | tr '\n' ' ')"
echo "CPU per subscribe: $(( (C1-C0)*1000/T/10 )) ms (10 subscribes, includes the 10 connects)"
kill $PID
