#!/usr/bin/env bash
# Unpack Debian's QEMU 10.0.2 (bookworm-backports) beside the system's QEMU, without installing it.
#
#   scripts/setup-qemu-10.sh [FOLDER]      default FOLDER: ${XDG_CACHE_HOME:-~/.cache}/blocktxn/qemu-10.0.2
#
# The packages are downloaded with a private apt configuration (its own sources list, package lists
# and cache inside FOLDER/.apt) that adds the bookworm-backports suite of the mirror the system
# already uses for bookworm; the system's apt configuration is never changed.  Each .deb is unpacked
# with `dpkg -x` into FOLDER.  The binaries need QEMU_MODULE_DIR=FOLDER/usr/lib/x86_64-linux-gnu/qemu
# (otherwise they load the system QEMU's modules and fail with "Only modules from the same build can
# be loaded"); blocktxn sets it by itself for a binary under FOLDER/usr/bin, and FOLDER/bin holds
# wrappers that set it for any other caller.  Prints FOLDER/usr/bin/qemu-system-x86_64 at the end.
# Running it again when FOLDER is complete does nothing.
set -euo pipefail

VERSION="1:10.0.2+ds-2+deb13u1~bpo12+1"
PACKAGES=(qemu-system-x86 qemu-utils qemu-system-common qemu-block-extra
          qemu-system-modules-opengl qemu-system-modules-spice)
folder=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/blocktxn/qemu-10.0.2}
mkdir -p "$folder"
folder=$(cd "$folder" && pwd)
stamp="$folder/.complete"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$VERSION" ]; then
    echo "$folder/usr/bin/qemu-system-x86_64"
    exit 0
fi

# The mirror the system uses for bookworm (deb822 sources first, then one-line sources).
mirror=""
for sources in /etc/apt/sources.list.d/*.sources; do
    [ -f "$sources" ] || continue
    mirror=$(awk '
        /^[[:space:]]*$/ { if (uris != "" && suites ~ /(^| )bookworm( |$)/) { print uris; exit } uris=""; suites=""; next }
        /^URIs:/ { uris=$2 } /^Suites:/ { $1=""; suites=$0 " " }
        END { if (uris != "" && suites ~ /(^| )bookworm( |$)/) print uris }' "$sources" | head -n 1)
    [ -n "$mirror" ] && break
done
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
             awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
fi
if [ -z "$mirror" ]; then
    echo "setup-qemu-10: no apt source for Debian bookworm found in /etc/apt; cannot add bookworm-backports" >&2
    exit 1
fi

aptdir="$folder/.apt"
mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/debs"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror bookworm-backports main" > "$aptdir/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o "Dir::Etc::SourceParts=-"
          -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache=$aptdir/cache"
          -o "Dir::State::status=/var/lib/dpkg/status" -o "Debug::NoLocking=1"
          -o "APT::Sandbox::User=root")
echo "setup-qemu-10: fetching the bookworm-backports package list (private apt configuration)" >&2
apt-get "${apt_opts[@]}" -q update >&2
cd "$aptdir/debs"
for package in "${PACKAGES[@]}"; do
    apt-get "${apt_opts[@]}" -q download "$package=$VERSION" >&2
done
for deb in "$aptdir"/debs/*.deb; do
    dpkg -x "$deb" "$folder"
done

moddir="$folder/usr/lib/x86_64-linux-gnu/qemu"
mkdir -p "$folder/bin"
for tool in qemu-system-x86_64 qemu-img qemu-io qemu-nbd qemu-storage-daemon; do
    [ -x "$folder/usr/bin/$tool" ] || continue
    printf '#!/bin/sh\nQEMU_MODULE_DIR=%s exec %s "$@"\n' "'$moddir'" "'$folder/usr/bin/$tool'" > "$folder/bin/$tool"
    chmod +x "$folder/bin/$tool"
done
QEMU_MODULE_DIR="$moddir" "$folder/usr/bin/qemu-system-x86_64" --version | head -n 1 >&2
echo "$VERSION" > "$stamp"
echo "$folder/usr/bin/qemu-system-x86_64"
