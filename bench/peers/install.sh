#!/usr/bin/env bash
# Installs what bench/peers measures with and against: nginx and HAProxy
# (the peers), wrk and h2load (HTTP load), ghz (gRPC load, pinned, built
# into bin/tools). Debian packages need root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/../.."

GHZ_VERSION="${GHZ_VERSION:-v0.120.0}"
need=()
for p in nginx:nginx-light haproxy:haproxy wrk:wrk h2load:nghttp2-client; do
	command -v "${p%%:*}" >/dev/null || need+=("${p##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
	$sudo apt-get update
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi
# ghz --version says "dev" when built by go install: a stamp file records
# which version bin/tools/ghz is.
if ! [ -x bin/tools/ghz ] || [ "$(cat bin/tools/ghz.version 2>/dev/null)" != "$GHZ_VERSION" ]; then
	GOBIN="$PWD/bin/tools" go install "github.com/bojand/ghz/cmd/ghz@${GHZ_VERSION}"
	echo "$GHZ_VERSION" >bin/tools/ghz.version
fi
