#!/usr/bin/env bash
# Health probe for the gateway container (HEALTHCHECK in deploy/Dockerfile):
#
#   gateway-healthcheck [PATH]      PATH defaults to /healthz; /readyz also works
#
# Exits 0 when the gateway answers PATH with HTTP 200, 1 otherwise. It asks
# the admin listener when GATEWAY_ADMIN_LISTEN is set (health is served only
# there then), else GATEWAY_LISTEN (default 0.0.0.0:8080); a wildcard host
# is asked on 127.0.0.1. Uses bash's /dev/tcp: the slim image has no curl.
set -u
path="${1:-/healthz}"
addr="${GATEWAY_ADMIN_LISTEN:-${GATEWAY_LISTEN:-0.0.0.0:8080}}"
port="${addr##*:}"
host="${addr%:*}"
host="${host#[}"
host="${host%]}"
case "$host" in "" | 0.0.0.0 | "::") host=127.0.0.1 ;; esac
{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3
IFS= read -r -t 2 status <&3 || exit 1
case "$status" in
    "HTTP/1."[01]" 200"*) exit 0 ;;
    *) exit 1 ;;
esac
