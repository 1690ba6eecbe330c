#!/usr/bin/env bash
# Builds every StockKube Mesh image: `docker/build.sh [TAG]` (default dev).
#
#   stockkube/stockdata  stockkube/stockweb  stockkube/mesh-proxy
#   stockkube/mesh-proxy-init  stockkube/mesh-controller  stockkube/mesh-injector
#   stockkube/mesh-dashboard
#
# Each is FROM scratch: static binaries (docker/binaries.sh: glibc linked
# statically), the CA certificates and a passwd file from this machine, and
# the health probe. Needs: Docker, and for mesh-proxy-init Debian's iptables
# (its iptables-nft and libraries are copied into the image).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-dev}
# One build at a time: the staging directories below are shared.
mkdir -p target
exec 9>target/docker-build.lock
flock 9

out=$(docker/binaries.sh)

# The binaries, without their debug information.
bin=target/docker/bin
rm -rf "$bin" && mkdir -p "$bin"
for binary in stockdata stockweb mesh-proxy mesh-proxy-init mesh-controller mesh-injector mesh-dashboard mesh-probe; do
  strip --strip-debug -o "$bin/$binary" "$out/$binary"
done

# The common root: users, CA certificates, the probe.
rootfs=target/docker/rootfs
rm -rf "$rootfs" && mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/usr/bin"
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\nmesh-proxy:x:2102:2102:mesh-proxy:/:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\nmesh-proxy:x:2102:\n' >"$rootfs/etc/group"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
cp "$bin/mesh-probe" "$rootfs/usr/bin/"

# An empty directory, for the directories images need to own.
mkdir -p target/docker/empty && touch target/docker/empty/.keep

# The init container's root: iptables-nft (IPv4 and IPv6, restore and
# save), its extensions, their libraries and loader.
init=target/docker/init-rootfs
rm -rf "$init" && mkdir -p "$init/usr/sbin" "$init/etc"
xtables=$(readlink -f /usr/sbin/xtables-nft-multi)
extensions=$(dirname "$(readlink -f /usr/lib/x86_64-linux-gnu/xtables/libxt_REDIRECT.so)")
cp "$xtables" "$init/usr/sbin/xtables-nft-multi"
for tool in iptables-restore iptables-save ip6tables-restore ip6tables-save; do
  ln -s xtables-nft-multi "$init/usr/sbin/$tool"
done
mkdir -p "$init$extensions" && cp -a "$extensions"/. "$init$extensions/"
for file in "$xtables" "$extensions"/*.so; do
  ldd "$file" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}'
done | sort -u | while read -r lib; do
  mkdir -p "$init$(dirname "$lib")" && cp -L "$lib" "$init$lib"
done
cp "$rootfs/etc/passwd" "$rootfs/etc/group" "$init/etc/"

for image in stockdata stockweb mesh-proxy mesh-proxy-init mesh-controller mesh-injector mesh-dashboard; do
  docker build --quiet --target "$image" --tag "stockkube/$image:$tag" . >/dev/null
  printf 'stockkube/%s:%s %s\n' "$image" "$tag" \
    "$(docker image inspect --format '{{.Size}}' "stockkube/$image:$tag" | awk '{printf "%.1f MB", $1/1e6}')"
done
