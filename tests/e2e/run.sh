#!/usr/bin/env bash
# End-to-end test: an unmodified Linux guest, booted by QEMU 11 under TCG, reaches host services
# through the daemon.
#
#   host: e2e_host_service ◀─ channel sockets (2, 0x13) ─┐
#         dbus-daemon + dbus-test-tool echo ◀─ 0x12 ──────┼─ vhost-user-cross-domain ◀─ QEMU
#         PipeWire (null sink) + WirePlumber ◀─ 0x10 ─────┘
#   guest (initramfs): e2e_guest_client, dbus-send, pw-cat ─▶ cross-domain-proxy ×4
#
# Channel 2 runs with large rings (ring=1M), which the proxy takes up (check q).
#
# Stages: a Debian trixie chroot with QEMU 11 from trixie-backports (debootstrap), guest kernels
# unpacked from Debian packages, builds (the daemon with cargo; cross-domain-proxy with cargo,
# statically linked; the guest client, static too, and the host service with plain rustc), one
# initramfs per kernel, then one boot per kernel with the checks. Byte-exact comparisons happen on
# the host, in the host service; this script collects its verdicts, adds the ones it can judge
# from the logs, prints one PASS/FAIL line per check and `N passed, M failed`, and exits non-zero
# on any failure. The exchange behind the checks is described in tests/e2e/protocol.rs.
#
# In the middle of channel 2's first transfer the host service pauses the VM through QEMU's
# monitor (QMP `stop`, two seconds, `cont`; check j): the transfer must still complete byte-exact
# (check a), and the daemon must have taken the stop for a pause, keeping every context (check k,
# from its log; docs/vmm-lifecycle.md).
#
# Needs root (debootstrap, chroot, mounts) on Debian 12 or newer, network access to the Debian
# archive and crates.io (cold run only), and about 1.2 GB under the cache directory. Cleans up
# its mounts and processes on every exit path. Logs of each boot go to target/e2e/SUITE/.
#
# Usage: tests/e2e/run.sh [--boot-only]
#   --boot-only   boot each kernel and check only the guest's virtio-gpu features (no proxy,
#                 no channel traffic): checks the environment without crates/cross-domain-proxy
# Environment:
#   VUCD_E2E_CACHE          cache directory (default /var/cache/vucd-e2e); delete it to start cold
#   VUCD_E2E_MIRROR         Debian mirror (default http://deb.debian.org/debian)
#   VUCD_E2E_KERNELS        guest kernels, by suite (default "trixie-backports bookworm")
#   VUCD_E2E_BOOT_TIMEOUT   seconds QEMU may run per boot (default 300)
set -euo pipefail
shopt -s inherit_errexit

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E_DIR="$REPO/tests/e2e"
CACHE="${VUCD_E2E_CACHE:-/var/cache/vucd-e2e}"
ROOT="$CACHE/trixie"
MIRROR="${VUCD_E2E_MIRROR:-http://deb.debian.org/debian}"
KERNEL_SUITES="${VUCD_E2E_KERNELS:-trixie-backports bookworm}"
BOOT_TIMEOUT="${VUCD_E2E_BOOT_TIMEOUT:-300}"
# Where the chroot keeps unpacked kernels and initramfs trees (inside ROOT, as seen from inside).
SRV=/srv/vucd-e2e
LOGS="$REPO/target/e2e"
STATIC_TARGET_DIR="$REPO/target/e2e-static"
TRIPLE=x86_64-unknown-linux-gnu

BOOT_ONLY=0
case "${1:-}" in
    "") ;;
    --boot-only) BOOT_ONLY=1 ;;
    *) echo "usage: $0 [--boot-only]" >&2; exit 2 ;;
esac

step() { printf '\n==> e2e: %s\n' "$*"; }
die() { printf 'e2e: error: %s\n' "$*" >&2; exit 1; }

# --- cleanup: every mount and every background process this script starts ---------------------

MOUNTS=()  # mount points, in the order they were mounted
PIDS=()    # background processes (daemon, host service, QEMU's chroot/timeout wrapper)
RUN=""     # per-run directory inside ROOT/tmp (vhost-user and channel sockets)

mounted_under() { # list mount points at or under $1 (from /proc/self/mounts, octal escapes kept)
    awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/self/mounts
}

stop_pid() { # TERM, then KILL after 5 s; never fails
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
}

unmount_all() {
    local i m
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m="${MOUNTS[i]}"
        umount "$m" 2>/dev/null || umount -l "$m" || echo "e2e: warning: cannot unmount $m" >&2
    done
    MOUNTS=()
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM HUP
    stop_all
    unmount_all
    if [ -n "$RUN" ] && [ -d "$RUN" ] && [ -z "$(mounted_under "$RUN")" ]; then
        rm -rf --one-file-system "$RUN"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

mount_chroot_fs() { # what apt, dpkg and QEMU need inside ROOT
    local fs
    [ -z "$(mounted_under "$ROOT")" ] ||
        die "left-over mounts under $ROOT (a killed run?); unmount them:" \
            "$(mounted_under "$ROOT" | tr '\n' ' ')"
    for fs in proc sys dev dev/pts; do
        mkdir -p "$ROOT/$fs"
        mount --bind "/$fs" "$ROOT/$fs"
        MOUNTS+=("$ROOT/$fs")
    done
}

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"; }

# --- stage timing ------------------------------------------------------------------------------

TIMES=()
STAGE=""
STAGE_T0=0
now() { date +%s.%N; }
stage_begin() { STAGE="$1"; STAGE_T0=$(now); step "$1"; }
stage_end() {
    local t
    t=$(awk -v a="$STAGE_T0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    TIMES+=("$(printf '%-34s %7s s' "$STAGE" "$t")")
    echo "e2e: $STAGE took $t s"
}

# --- results -----------------------------------------------------------------------------------

PASSED=0
FAILED=0
result() { # PASS|FAIL  text
    case "$1" in
        PASS) PASSED=$((PASSED + 1)) ;;
        *) FAILED=$((FAILED + 1)) ;;
    esac
    printf '%s %s\n' "$1" "$2"
}

# === 1. host packages and the trixie chroot =====================================================

stage_begin "chroot (debootstrap, QEMU)"
[ "$(id -u)" = 0 ] || die "run as root: debootstrap, chroot and mounts need it"
if ! command -v debootstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
fi
mkdir -p "$CACHE"
# One run at a time per cache: runs share the chroot and its mounts.
exec 9>"$CACHE/.lock"
flock -n 9 || die "another run holds $CACHE/.lock"
# The stamp names what the chroot must contain; a chroot without it (an interrupted run, or an
# older package list) is built again from nothing.
ROOT_PACKAGES="qemu-system-x86/trixie-backports busybox-static cpio kmod xz-utils"
if [ "$(cat "$ROOT/.vucd-e2e-complete" 2>/dev/null)" != "$ROOT_PACKAGES" ]; then
    if [ -e "$ROOT" ]; then
        [ -z "$(mounted_under "$ROOT")" ] ||
            die "cannot rebuild $ROOT: something is mounted under it"
        echo "e2e: removing incomplete chroot $ROOT"
        rm -rf --one-file-system "$ROOT"
    fi
    debootstrap --variant=minbase trixie "$ROOT" "$MIRROR"
    echo "deb $MIRROR trixie-backports main" >"$ROOT/etc/apt/sources.list.d/trixie-backports.list"
    mount_chroot_fs
    in_root apt-get update -q
    in_root apt-get install -y -q --no-install-recommends -t trixie-backports qemu-system-x86
    in_root apt-get install -y -q --no-install-recommends busybox-static cpio kmod xz-utils
    in_root apt-get clean
    unmount_all
    echo "$ROOT_PACKAGES" >"$ROOT/.vucd-e2e-complete"
else
    echo "e2e: reusing $ROOT"
fi
in_root qemu-system-x86_64 --version | head -n 1
stage_end

# The real host services of the PipeWire and D-Bus checks, and the guest programs that reach
# them, come from the same chroot: PipeWire 1.4 with WirePlumber (links the guest's stream to
# the null sink) and pw-cat/pw-record, dbus-daemon with dbus-send, and dbus-test-tool (dbus-tests:
# a service that answers every method call). Installed into an existing chroot without
# rebuilding it; a stamp of their own says which list is in.
stage_begin "host services (PipeWire, D-Bus)"
SERVICE_PACKAGES="pipewire pipewire-bin wireplumber dbus-daemon dbus-bin dbus-tests"
if [ "$(cat "$ROOT/.vucd-e2e-services" 2>/dev/null)" != "$SERVICE_PACKAGES" ]; then
    mount_chroot_fs
    in_root apt-get update -q
    # shellcheck disable=SC2086 # a list of package names
    in_root apt-get install -y -q --no-install-recommends $SERVICE_PACKAGES
    in_root apt-get clean
    unmount_all
    echo "$SERVICE_PACKAGES" >"$ROOT/.vucd-e2e-services"
else
    echo "e2e: reusing the service packages"
fi
echo "e2e: $(in_root pipewire --version | grep -m1 -o 'libpipewire [0-9.]*'), $(
    in_root dbus-daemon --version | head -n 1)"
stage_end

# === 2. guest kernels ===========================================================================

# apt options that make apt inside the chroot see bookworm instead of trixie, with lists of its own
# so the chroot's own package state stays pure trixie.
declare -A KREL # suite -> kernel release
APT_DOWNLOAD=(-o APT::Sandbox::User=root) # files land in root's directories
BOOKWORM_APT=(-o Dir::Etc::SourceList=/etc/apt/vucd-bookworm.list
    -o Dir::Etc::SourceParts=/nonexistent
    -o Dir::State::Lists=/var/lib/apt/vucd-bookworm-lists -o Dir::Cache::pkgcache=
    -o Dir::Cache::srcpkgcache=)

# fetch_kernel SUITE: download the suite's linux-image-amd64 and the linux-* packages it pulls in
# (the image, and on newer kernels its base/binary/modules parts), unpack them under
# $SRV/kernels/SUITE, and set KREL[SUITE] to the kernel release.
fetch_kernel() {
    local suite=$1 dir="$SRV/kernels/$1" apt_opts=() meta
    if [ -f "$ROOT$dir/.complete" ]; then
        KREL[$suite]=$(cat "$ROOT$dir/.complete")
        echo "e2e: reusing the $suite kernel"
        return
    fi
    case "$suite" in
        trixie-backports) meta=linux-image-amd64/trixie-backports ;;
        bookworm)
            meta=linux-image-amd64
            apt_opts=("${BOOKWORM_APT[@]}")
            echo "deb $MIRROR bookworm main" >"$ROOT/etc/apt/vucd-bookworm.list"
            mkdir -p "$ROOT/var/lib/apt/vucd-bookworm-lists/partial"
            in_root apt-get "${apt_opts[@]}" update -q
            ;;
        *) die "unknown kernel suite $suite (known: trixie-backports bookworm)" ;;
    esac
    rm -rf "$ROOT$dir"
    mkdir -p "$ROOT$dir/tree"
    # Breadth-first over Depends, keeping only the kernel's own packages; each package is
    # downloaded into a directory of its own so that its file is the only one there.
    local queue=("$meta") seen=" " pkg deb dep n=0
    while [ ${#queue[@]} -gt 0 ]; do
        pkg=${queue[0]}
        queue=("${queue[@]:1}")
        n=$((n + 1))
        mkdir -p "$ROOT$dir/debs/$n"
        # shellcheck disable=SC2016 # expanded by the inner shell
        in_root sh -c 'cd "$1" && shift && exec "$@"' sh "$dir/debs/$n" \
            apt-get "${apt_opts[@]}" "${APT_DOWNLOAD[@]}" download -q "$pkg"
        deb=$(cd "$ROOT$dir/debs/$n" && ls ./*.deb)
        deb="$dir/debs/$n/${deb#./}"
        for dep in $(in_root dpkg-deb -f "$deb" Depends | tr ',' '\n' |
            sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' |
            grep -E '^linux-(image|binary|modules|base)-[0-9]' || true); do
            case "$seen" in *" $dep "*) continue ;; esac
            seen="$seen$dep "
            queue+=("$dep")
        done
        echo "e2e: unpacking $(basename "$deb")"
        in_root dpkg-deb -x "$deb" "$dir/tree"
    done
    rm -rf "$ROOT$dir/debs"
    # The image is boot/vmlinuz-RELEASE in older packages, usr/lib/modules/RELEASE/vmlinuz in
    # newer ones.
    local image="" f
    for f in "$ROOT$dir"/tree/boot/vmlinuz-* "$ROOT$dir"/tree/usr/lib/modules/*/vmlinuz; do
        if [ -f "$f" ]; then
            image=${f#"$ROOT$dir/tree/"}
            break
        fi
    done
    [ -n "$image" ] || die "no vmlinuz in the $suite kernel packages"
    local release
    case "$image" in
        boot/vmlinuz-*) release=${image#boot/vmlinuz-} ;;
        *) release=$(basename "$(dirname "$image")") ;;
    esac
    ln -sfn "tree/$image" "$ROOT$dir/vmlinuz"
    # Module dependencies, for modprobe --show-depends when building the initramfs. Debian
    # kernels since trixie install modules under /usr/lib/modules; kmod looks under lib/.
    if [ ! -e "$ROOT$dir/tree/lib" ] && [ -d "$ROOT$dir/tree/usr/lib/modules" ]; then
        ln -s usr/lib "$ROOT$dir/tree/lib"
    fi
    in_root depmod -b "$dir/tree" "$release"
    echo "$release" >"$ROOT$dir/.complete"
    KREL[$suite]=$release
}

stage_begin "guest kernels"
mount_chroot_fs
for suite in $KERNEL_SUITES; do
    fetch_kernel "$suite"
    echo "e2e: $suite kernel: ${KREL[$suite]}"
done
unmount_all
stage_end

# === 3. builds ==================================================================================

stage_begin "builds"
cd "$REPO"
BIN="$LOGS/bin"
mkdir -p "$BIN"
cargo build --release --bin vhost-user-cross-domain
DAEMON="$REPO/target/release/vhost-user-cross-domain"
# The guest client and the host service use only the standard library: a plain rustc builds each
# in seconds, without the package's dev-dependencies (cargo builds and lints them as examples).
rustc --edition 2021 -O examples/e2e_host_service.rs -o "$BIN/e2e_host_service"
HOST_SERVICE="$BIN/e2e_host_service"
rustc --edition 2021 -O examples/e2e_audio.rs -o "$BIN/e2e_audio"
AUDIO="$BIN/e2e_audio"
rustc --edition 2021 -O -C target-feature=+crt-static --target "$TRIPLE" \
    examples/e2e_guest_client.rs -o "$BIN/e2e_guest_client"
GUEST_CLIENT="$BIN/e2e_guest_client"
if [ "$BOOT_ONLY" = 0 ]; then
    # A target directory of its own: the static RUSTFLAGS would otherwise invalidate the normal
    # build's artifacts. The proxy is its own package in the workspace (crates/cross-domain-proxy).
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target "$TRIPLE" \
        --target-dir "$STATIC_TARGET_DIR" -p cross-domain-proxy --bin cross-domain-proxy
fi
PROXY="$STATIC_TARGET_DIR/$TRIPLE/release/cross-domain-proxy"
stage_end

# === 4. initramfs, one per kernel ===============================================================

# build_initramfs SUITE RELEASE: busybox, the virtio-gpu module chain in load order (decompressed),
# /init, the guest client and (unless --boot-only) the proxy; writes $SRV/initrd-SUITE.gz.
build_initramfs() {
    local suite=$1 release=$2 kdir="$SRV/kernels/$1/tree" t="$SRV/initramfs-$1"
    rm -rf "$ROOT$t"
    mkdir -p "$ROOT$t"/{bin,dev,proc,sys,run,tmp,lib/modules}
    local m n=0 base
    : >"$ROOT$t/lib/modules/load-order"
    # virtio_pci is built in on Debian's kernels; listed in case a kernel has it as a module.
    for m in $(for name in virtio_pci virtio_gpu; do
        in_root modprobe -d "$kdir" -S "$release" --show-depends "$name"
    done | awk '$1 == "insmod" { print $2 }'); do
        base=$(basename "$m")
        base=${base%.xz}
        grep -qx "$base" "$ROOT$t/lib/modules/load-order" && continue
        case "$m" in
            *.ko.xz) in_root xz -dc "$m" >"$ROOT$t/lib/modules/$base" ;;
            *.ko) cp "$ROOT$m" "$ROOT$t/lib/modules/$base" ;;
            *) die "unsupported module compression: $m" ;;
        esac
        echo "$base" >>"$ROOT$t/lib/modules/load-order"
        n=$((n + 1))
    done
    echo "e2e: $suite: $n modules: $(tr '\n' ' ' <"$ROOT$t/lib/modules/load-order")"
    grep -Eq '^virtio[-_]gpu\.ko$' "$ROOT$t/lib/modules/load-order" ||
        die "$suite: virtio_gpu is not a module of $release (the initramfs expects one)"
    in_root cat /bin/busybox >"$ROOT$t/bin/busybox"
    chmod 0755 "$ROOT$t/bin/busybox"
    install -m 0755 "$E2E_DIR/init.sh" "$ROOT$t/init"
    install -m 0755 "$GUEST_CLIENT" "$ROOT$t/bin/e2e-guest-client"
    if [ "$BOOT_ONLY" = 0 ]; then
        install -m 0755 "$PROXY" "$ROOT$t/bin/cross-domain-proxy"
        add_guest_programs "$t"
    fi
    in_root sh -c "cd $t && find . | cpio -o -H newc --quiet | gzip -1 >$SRV/initrd-$suite.gz"
    echo "e2e: $suite: initramfs $(du -h "$ROOT$SRV/initrd-$suite.gz" | cut -f1)"
}

# Real guest programs for the PipeWire and D-Bus checks, taken from the chroot with the shared
# libraries they load (ldd) and the PipeWire modules and SPA plugins a client context opens
# (client.conf). The guest's /init runs them with the chroot's paths.
GUEST_PROGRAMS="/usr/bin/pw-cat /usr/bin/dbus-send"
LIBDIR=/usr/lib/x86_64-linux-gnu
GUEST_PLUGINS="$LIBDIR/spa-0.2/support/libspa-support.so
$LIBDIR/spa-0.2/audioconvert/libspa-audioconvert.so
$LIBDIR/pipewire-0.3/libpipewire-module-protocol-native.so
$LIBDIR/pipewire-0.3/libpipewire-module-client-node.so
$LIBDIR/pipewire-0.3/libpipewire-module-client-device.so
$LIBDIR/pipewire-0.3/libpipewire-module-adapter.so
$LIBDIR/pipewire-0.3/libpipewire-module-metadata.so
$LIBDIR/pipewire-0.3/libpipewire-module-session-manager.so"
add_guest_programs() { # T: the initramfs tree (as seen inside ROOT)
    local t=$1 files
    # Each file and every library any of them needs, symlinks resolved (tar -h).
    # shellcheck disable=SC2086 # lists of paths
    files=$(in_root sh -c 'for f in "$@"; do echo "$f"; ldd "$f" |
        awk "/=> \// { print \$3 } /^[[:space:]]*\/lib64/ { print \$1 }"; done | sort -u' \
        sh $GUEST_PROGRAMS $GUEST_PLUGINS)
    # shellcheck disable=SC2086
    in_root tar -C / -chf - $files usr/share/pipewire/client.conf | in_root tar -C "$t" -xf -
    echo "e2e: guest programs: $(echo "$files" | wc -l) files, $(du -sh "$ROOT$t/usr" | cut -f1)"
    "$AUDIO" sine "$ROOT$t/sine.wav" "$SINE_SECONDS" "$SINE_HZ"
}
SINE_SECONDS=3
SINE_HZ=997

stage_begin "initramfs"
mount_chroot_fs
for suite in $KERNEL_SUITES; do build_initramfs "$suite" "${KREL[$suite]}"; done
unmount_all
stage_end

# === 5. boots and checks ========================================================================

wait_for_socket() { # PATH PID WHAT
    local i
    for i in $(seq 100); do
        [ -S "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# in_root_bg CMD...: in_root for a background service, as one process ($! is the service itself:
# the subshell, chroot and env all exec), so that stop_pid reaches it.
in_root_bg() {
    (exec chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@") \
        9>&- &
}

# start_real_services LOGS RUN_IN: the real host services behind channels 0x12 (a D-Bus session
# bus with dbus-test-tool's echo service on it) and 0x10 (PipeWire with a null sink, and
# WirePlumber, which links the guest's stream to it), all from the chroot; sets `services` to the
# daemon's --channel options for them. Where the host has a udmabuf device (the one way to share
# PipeWire's sealed activation records with QEMU 11; docs/pipewire.md) a recorder captures the
# sink's monitor for the full audio check.
start_real_services() {
    local logs=$1 run_in=$2 i
    mkdir -p "$RUN/pw"
    local bus="unix:path=$run_in/bus.sock"
    in_root_bg dbus-daemon --session --nofork --address="$bus" --print-address=1 \
        >"$logs/dbus-daemon.out" 2>"$logs/dbus-daemon.log"
    PIDS+=("$!")
    wait_for_socket "$RUN/bus.sock" "$!" || die "dbus-daemon did not start ($logs/dbus-daemon.log)"
    in_root_bg env DBUS_SESSION_BUS_ADDRESS="$bus" dbus-test-tool echo --name=org.vucd.E2E.Echo \
        >"$logs/dbus-echo.log" 2>&1
    PIDS+=("$!")
    for i in $(seq 100); do
        in_root env DBUS_SESSION_BUS_ADDRESS="$bus" dbus-send --session --print-reply \
            --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.GetNameOwner \
            string:org.vucd.E2E.Echo >"$logs/dbus-echo.owner" 2>/dev/null && break
        sleep 0.1
    done
    grep -q 'string ":' "$logs/dbus-echo.owner" ||
        die "dbus-test-tool did not take its name on the bus ($logs/dbus-echo.log)"
    # The bus's id, as a host client sees it: the guest must get the same answer.
    in_root env DBUS_SESSION_BUS_ADDRESS="$bus" dbus-send --session --print-reply \
        --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.GetId \
        >"$logs/dbus-bus.id"

    cp "$E2E_DIR/pipewire.conf" "$RUN/pw/pipewire.conf"
    local pw_env=(env XDG_RUNTIME_DIR="$run_in/pw" HOME="$run_in/pw")
    # conn.protocol-native at debug level logs every message with its count of descriptors.
    in_root_bg "${pw_env[@]}" PIPEWIRE_DEBUG="3,conn.protocol-native:4,mod.client-node:5" \
        pipewire -c "$run_in/pw/pipewire.conf" >"$logs/pipewire.log" 2>&1
    PIDS+=("$!")
    wait_for_socket "$RUN/pw/pipewire-0" "$!" || die "PipeWire did not start ($logs/pipewire.log)"
    in_root_bg "${pw_env[@]}" wireplumber >"$logs/wireplumber.log" 2>&1
    PIDS+=("$!")
    if [ -c /dev/udmabuf ]; then
        in_root_bg "${pw_env[@]}" pw-record --target e2e-sink -P '{ stream.capture.sink = true }' \
            "$run_in/pw/recorded.wav" >"$logs/pw-record.log" 2>&1
        PIDS+=("$!")
        RECORDER=$!
    fi
    services=(--channel "0x12:$RUN/bus.sock" --channel "0x10:$RUN/pw/pipewire-0")
}
RECORDER=""

# real_service_checks TAG LOGS: the checks of the real programs (after the boot).
#   m  D-Bus: the guest's dbus-send reached the host's bus: its GetId answer is the one a host
#      client gets.
#   n  D-Bus: a method call from the guest answered by the host service on that bus.
#   o  PipeWire: every descriptor the host's PipeWire sent the guest client arrived, each as
#      what it is (memory as memory, eventfds as eventfds), none refused or dropped.
#   p  PipeWire without udmabuf: the activation record (memory that is not whole pages, sealed
#      against growing) is refused with the documented error, never copied: pw-cat's mapping
#      of it fails with EINVAL and it does not play.
#   p  PipeWire with udmabuf: the guest's pw-cat played the sine, recorded on the host.
real_service_checks() {
    local tag=$1 logs=$2 guid owner
    guid=$(sed -n 's/.*string "\([0-9a-f]*\)".*/\1/p' "$logs/dbus-bus.id" | head -n 1)
    if [ -n "$guid" ] && grep -q "^E2E-DBUS-GETID: *string \"$guid\"" "$logs/serial.log"; then
        result PASS "$tag m: D-Bus: the guest's dbus-send reached the host bus (GetId $guid)"
    else
        result FAIL "$tag m: D-Bus: no GetId answer '$guid' from the host bus in the guest's output"
    fi
    owner=$(sed -n 's/.*string "\(:[0-9.]*\)".*/\1/p' "$logs/dbus-echo.owner" | head -n 1)
    if [ -n "$owner" ] &&
        grep -q "^E2E-DBUS-CALL: method return .* sender=$owner " "$logs/serial.log" &&
        grep -q '^E2E-DBUS: call exit status 0$' "$logs/serial.log"; then
        result PASS "$tag n: D-Bus: the guest's method call answered by the host service ($owner)"
    else
        result FAIL "$tag n: D-Bus: no answer from the host service '$owner' to the guest's call"
    fi

    # What PipeWire sent the guest client (it is the only client that gets descriptors: the
    # session manager gets none): Core.AddMem (id 0, opcode 6) carries memory, the client
    # node's SetActivation and Transport carry eventfds.
    local sent_mem sent_evt counters got_mem got_pipe got_evt got_refused
    sent_mem=$(sed -n 's/.* out: id:0 op:6 .* fds:\([0-9]*\)$/\1/p' "$logs/pipewire.log" |
        awk '{ n += $1 } END { print n + 0 }')
    sent_evt=$(grep -v ' out: id:0 op:6 ' "$logs/pipewire.log" |
        sed -n 's/.* out: .* fds:\([0-9]*\)$/\1/p' | awk '{ n += $1 } END { print n + 0 }')
    counters=$(grep -o 'counters: channel 16 .*' "$logs/daemon.log" | tail -n 1 || true)
    read -r got_mem got_pipe got_evt got_refused < <(echo "$counters" |
        sed -n 's/.*host to guest .* fds \([0-9]*\) memory, \([0-9]*\) pipe, \([0-9]*\) eventfd, \([0-9]*\) refused.*/\1 \2 \3 \4/p') || true
    if [ "$sent_mem" -gt 0 ] && [ "$sent_evt" -gt 0 ] && [ "${got_mem:-x}" = "$sent_mem" ] &&
        [ "${got_evt:-x}" = "$sent_evt" ] && [ "$got_pipe" = 0 ] && [ "$got_refused" = 0 ]; then
        result PASS "$tag o: PipeWire: all $((sent_mem + sent_evt)) descriptors it sent arrived: \
$sent_mem memory, $sent_evt eventfds, none refused"
    else
        result FAIL "$tag o: PipeWire sent $sent_mem memory and $sent_evt eventfds; the daemon \
received memory ${got_mem:-?}, pipe ${got_pipe:-?}, eventfd ${got_evt:-?}, refused ${got_refused:-?}"
    fi

    local pw_status
    pw_status=$(sed -n 's/^E2E-PW: pw-cat exit status \([0-9]*\)$/\1/p' "$logs/serial.log")
    if [ -n "$RECORDER" ]; then
        local verdict
        verdict=$("$AUDIO" judge "$logs/recorded.wav" "$SINE_HZ" "$((SINE_SECONDS - 1))" || true)
        if [ "$pw_status" = 0 ] && [ "${verdict%% *}" = PASS ]; then
            result PASS "$tag p: PipeWire (udmabuf): the guest's pw-cat played; recorded ${verdict#* }"
        else
            result FAIL "$tag p: PipeWire (udmabuf): pw-cat exit status ${pw_status:-?}; recorded: ${verdict#* }"
        fi
    else
        # The guest kernel does not wait for the host's answer to a blob creation, so the
        # refusal reaches pw-cat as a descriptor that fails to map (docs/guest-proxy.md).
        if grep -q 'of 2312 bytes is not a page multiple, cannot grow and is not write-sealed' \
            "$logs/daemon.log" && ! grep -q 'gets a copy' "$logs/daemon.log" &&
            grep -q '^E2E-PW-CAT: .*Failed to mmap memory .*Invalid argument' "$logs/serial.log" &&
            [ -n "$pw_status" ] && [ "$pw_status" != 0 ]; then
            result PASS "$tag p: PipeWire (no udmabuf): the 2312-byte activation record was \
refused, not copied: pw-cat's mmap of it failed (EINVAL) and it did not play (exit status $pw_status)"
        else
            result FAIL "$tag p: PipeWire (no udmabuf): no refusal of the 2312-byte activation \
record in the daemon's log, a copy, no failed mmap in pw-cat's log, or pw-cat did not fail \
(exit status ${pw_status:-?})"
        fi
    fi
}

# boot SUITE RELEASE: one daemon, one host service, one guest boot; prints the checks.
boot() {
    local suite=$1 release=$2 logs="$LOGS/$1"
    local tag="[$release]"
    rm -rf "$logs"
    mkdir -p "$logs"
    RUN=$(mktemp -d "$ROOT/tmp/vucd-e2e.XXXXXX")
    local run_in=${RUN#"$ROOT"} # the same directory as QEMU sees it inside the chroot

    local service_pid=""
    if [ "$BOOT_ONLY" = 0 ]; then
        "$HOST_SERVICE" --c2 "$RUN/c2-host.sock" --c13 "$RUN/c13-host.sock" \
            --qmp "$RUN/qmp.sock" >"$logs/host-service.out" 2>"$logs/host-service.log" 9>&- &
        service_pid=$!
        PIDS+=("$service_pid")
        wait_for_socket "$RUN/c13-host.sock" "$service_pid" ||
            die "the host service did not start (log: $logs/host-service.log)"
    fi
    local services=()
    [ "$BOOT_ONLY" = 1 ] || start_real_services "$logs" "$run_in"
    RUST_LOG=${RUST_LOG:-info} "$DAEMON" --socket-path "$RUN/vgpu.sock" \
        --channel "2:$RUN/c2-host.sock,ring=1M" --channel "0x13:$RUN/c13-host.sock" "${services[@]}" \
        --partial-pages auto --shm-size 1G >"$logs/daemon.log" 2>&1 9>&- &
    local daemon_pid=$!
    PIDS+=("$daemon_pid")
    wait_for_socket "$RUN/vgpu.sock" "$daemon_pid" ||
        die "the daemon did not start (log: $logs/daemon.log)"

    # QEMU's monitor, for the host service's stop/cont in the middle of a transfer.
    local monitor=()
    [ "$BOOT_ONLY" = 1 ] || monitor=(-qmp "unix:$run_in/qmp.sock,server=on,wait=off")

    mount_chroot_fs
    local qemu_rc=0 t0
    t0=$(now)
    in_root timeout "$BOOT_TIMEOUT" qemu-system-x86_64 -accel tcg -m 512M -smp 1 \
        -nographic -no-reboot -vga none -nodefaults -serial stdio \
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
        -kernel "$SRV/kernels/$suite/vmlinuz" -initrd "$SRV/initrd-$suite.gz" \
        -append 'console=ttyS0 panic=-1 loglevel=4 no_timer_check' \
        -chardev "socket,id=vgpu,path=$run_in/vgpu.sock" \
        -device vhost-user-test-device-pci,chardev=vgpu,virtio-id=16,num_vqs=2,config_size=24 \
        "${monitor[@]}" </dev/null >"$logs/serial.raw" 2>"$logs/qemu.log" 9>&- &
    local qemu_pid=$!
    PIDS+=("$qemu_pid")
    wait "$qemu_pid" || qemu_rc=$?
    unmount_all
    # Without carriage returns and the firmware's terminal escapes.
    tr -d '\r' <"$logs/serial.raw" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' \
        >"$logs/serial.log"
    echo "e2e: $suite: QEMU exited with status $qemu_rc after $(awk -v a="$t0" -v b="$(now)" \
        'BEGIN { printf "%.1f", b - a }') s; serial console:"
    sed 's/^/  | /' "$logs/serial.log"

    # The host service ends by itself once both sessions are over; give it a moment.
    if [ -n "$service_pid" ]; then
        local i
        for i in $(seq 50); do kill -0 "$service_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    local daemon_alive=0
    if kill -0 "$daemon_pid" 2>/dev/null; then
        daemon_alive=1
        # Its per-channel counters (SIGUSR1), for the PipeWire check.
        kill -USR1 "$daemon_pid"
        sleep 0.5
    fi
    stop_all
    [ ! -f "$RUN/pw/recorded.wav" ] || cp "$RUN/pw/recorded.wav" "$logs/"
    rm -rf --one-file-system "$RUN"
    RUN=""

    echo "e2e: $suite: results"
    # QEMU must exit because the guest powered off: 124 is the timeout, a signal (e.g. the
    # segfault QEMU 11.1.3 has when SHMEM_MAP arrives while the device is stopped) is >= 128.
    if [ "$qemu_rc" = 0 ] && grep -q '^E2E-INIT: done' "$logs/serial.log"; then
        result PASS "$tag boot: guest ran /init to the end and powered off, QEMU exited cleanly"
    else
        result FAIL "$tag boot: QEMU exit status $qemu_rc (124: timeout; >= 128: crash), /init $(
            grep -q '^E2E-INIT: done' "$logs/serial.log" && echo finished || echo 'did not finish')"
    fi
    if [ "$daemon_alive" = 1 ]; then
        result PASS "$tag daemon: still running after the guest powered off"
    else
        result FAIL "$tag daemon: exited during the boot (log: $logs/daemon.log)"
    fi

    # (e) the guest driver's feature lines.
    local features
    features=$(grep -o '\[drm\] features: .*' "$logs/serial.log" | tr '\n' ' ' || true)
    local missing="" f
    for f in +resource_blob +host_visible +context_init; do
        case " $features " in *" $f "*) ;; *) missing="$missing $f" ;; esac
    done
    if [ -n "$features" ] && [ -z "$missing" ]; then
        result PASS "$tag e: guest virtio-gpu features: $features"
    else
        result FAIL "$tag e: guest virtio-gpu features lack${missing}: '${features}'"
    fi

    if grep -qE ' (WARN|ERROR) ' "$logs/daemon.log"; then
        echo "e2e: $suite: the daemon's warnings and errors:"
        grep -E ' (WARN|ERROR) ' "$logs/daemon.log" | sed 's/^/  | /'
    fi

    [ "$BOOT_ONLY" = 1 ] && return 0
    # (a)–(d) and the extra fd checks: the host service's verdicts, one line per check; a check
    # with no verdict never got that far.
    local id line
    for id in a b c d f g h i j l; do
        line=$(grep -E "^(PASS|FAIL) $id: " "$logs/host-service.out" | head -n 1 || true)
        if [ -n "$line" ]; then
            result "${line%% *}" "$tag ${line#* }"
        else
            result FAIL "$tag $id: no verdict from the host service (log: $logs/host-service.log)"
        fi
    done
    # (q) channel 2 is configured with large rings (ring=1M): the guest's proxy must have asked
    # for one, so that check (a)'s 1 MiB echo crossed in messages of up to 1 MiB.
    if grep -q 'INIT channel 0x2 -> .*large ring: 1048576 bytes' "$logs/daemon.log"; then
        result PASS "$tag q: channel 2 ran with a 1 MiB ring (ring=1M; the proxy asked for it)"
    else
        result FAIL "$tag q: channel 2's context did not get a large ring (log: $logs/daemon.log)"
    fi
    real_service_checks "$tag" "$logs"
    # (k) QEMU's stop/cont was a pause to the daemon: it kept its state, no guest reset.
    if grep -q 'restarted where it stopped' "$logs/daemon.log" &&
        ! grep -q 'restarted anew' "$logs/daemon.log"; then
        result PASS "$tag k: daemon: QEMU's stop/cont was a pause, every context kept"
    else
        result FAIL "$tag k: daemon: no resume after QEMU's stop/cont, or a reset (log: $logs/daemon.log)"
    fi
}

for suite in $KERNEL_SUITES; do
    stage_begin "boot + checks ($suite)"
    boot "$suite" "${KREL[$suite]}"
    stage_end
done

step "stage times"
printf '  %s\n' "${TIMES[@]}"
step "result"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
