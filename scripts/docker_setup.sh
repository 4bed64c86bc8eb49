#!/usr/bin/env bash
# Make a Docker engine and trajgym's sandbox image available on this machine, so that the
# Docker sandbox backend runs (and is tested) for real. Images cannot be pulled here (no
# registry), so the image is built locally: a minimal Debian root filesystem with Python
# (debootstrap, python3 with its standard library), imported with `docker import`. Safe to re-run; exits 0 with a message when
# no engine can be started (the Docker tests then skip, saying why).
set -uo pipefail

IMAGE=${TRAJGYM_SANDBOX_IMAGE:-trajgym-sandbox:bookworm}
SUITE=${TRAJGYM_SANDBOX_SUITE:-bookworm}

say() { echo "docker_setup: $*"; }

if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      say "no Docker engine and no way to install one here"; exit 0
    fi
    apt-get install -y -q docker.io >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker.io >/dev/null 2>&1; } \
      || { say "could not install docker.io"; exit 0; }
  fi
  if [ "$(id -u)" != 0 ]; then say "dockerd is not running and needs root to start"; exit 0; fi
  nohup dockerd >/tmp/trajgym-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { say "dockerd did not start (see /tmp/trajgym-dockerd.log)"; exit 0; }
fi

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "engine up, image $IMAGE present"; exit 0
fi
if ! command -v debootstrap >/dev/null; then
  apt-get install -y -q debootstrap >/dev/null 2>&1 || { say "could not install debootstrap"; exit 0; }
fi
ROOTFS=$(mktemp -d /tmp/trajgym-rootfs-XXXX)
trap 'rm -rf "$ROOTFS"' EXIT
if ! debootstrap --variant=minbase --include=python3 "$SUITE" "$ROOTFS" \
    http://deb.debian.org/debian >/tmp/trajgym-debootstrap.log 2>&1; then
  say "debootstrap failed (see /tmp/trajgym-debootstrap.log)"; exit 0
fi
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import - "$IMAGE" >/dev/null && say "built image $IMAGE"
