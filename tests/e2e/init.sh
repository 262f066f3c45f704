#!/bin/busybox sh
# /init of the end-to-end test's initramfs (see run.sh). Loads the virtio-gpu module chain, waits
# for the render node, starts one cross-domain-proxy per channel, runs the guest client and the
# real D-Bus and PipeWire clients, and powers off. Lines starting with E2E- are read by run.sh on
# the serial console.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "E2E-INIT: $*"; }
say "kernel $(uname -r)"

while read -r m; do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done </lib/modules/load-order

i=0
while [ ! -e /dev/dri/renderD128 ] && [ $i -lt 300 ]; do
    sleep 0.1
    i=$((i + 1))
done
# The driver logs at KERN_INFO, below the console's loglevel: copy its lines to the console.
dmesg | grep -E '\[drm\]|virtio' | sed 's/^/E2E-DMESG: /'

if [ ! -e /dev/dri/renderD128 ]; then
    say "no /dev/dri/renderD128 after 30 s"
elif [ -x /bin/cross-domain-proxy ]; then
    export RUST_LOG=info
    cross-domain-proxy --channel 2 --listen /run/c2.sock >/tmp/proxy-c2.log 2>&1 &
    cross-domain-proxy --channel 0x13 --listen /run/c13.sock >/tmp/proxy-c13.log 2>&1 &
    # Real programs: D-Bus on 0x12, PipeWire on 0x10.
    cross-domain-proxy --channel 0x12 --listen /run/bus.sock >/tmp/proxy-c12.log 2>&1 &
    mkdir -p /run/pw
    cross-domain-proxy --channel 0x10 --listen /run/pw/pipewire-0 >/tmp/proxy-c10.log 2>&1 &
    i=0
    while { [ ! -S /run/c2.sock ] || [ ! -S /run/c13.sock ] || [ ! -S /run/bus.sock ] ||
        [ ! -S /run/pw/pipewire-0 ]; } && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    # The host enforces its own deadline; this one only makes sure the logs below get printed.
    timeout 240 e2e-guest-client --c2 /run/c2.sock --c13 /run/c13.sock
    say "guest client exit status $?"

    # The programs come from Debian (run.sh copies them and their libraries in).
    export PATH=/bin:/usr/bin LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu
    bus=unix:path=/run/bus.sock
    timeout 60 dbus-send --bus=$bus --print-reply --dest=org.freedesktop.DBus \
        /org/freedesktop/DBus org.freedesktop.DBus.GetId >/tmp/dbus-getid.out 2>&1
    echo "E2E-DBUS: GetId exit status $?"
    sed 's/^/E2E-DBUS-GETID: /' /tmp/dbus-getid.out
    timeout 60 dbus-send --bus=$bus --print-reply --dest=org.vucd.E2E.Echo /org/vucd/E2E \
        org.vucd.E2E.Echo.Hello string:"from the guest" uint32:42 >/tmp/dbus-call.out 2>&1
    echo "E2E-DBUS: call exit status $?"
    sed 's/^/E2E-DBUS-CALL: /' /tmp/dbus-call.out

    PIPEWIRE_REMOTE=/run/pw/pipewire-0 PIPEWIRE_DEBUG=2 HOME=/tmp XDG_RUNTIME_DIR=/run/pw \
        timeout 25 pw-cat --playback --target e2e-sink /sine.wav >/tmp/pw-cat.log 2>&1
    echo "E2E-PW: pw-cat exit status $?"
    sed 's/^/E2E-PW-CAT: /' /tmp/pw-cat.log
    unset LD_LIBRARY_PATH

    sed 's/^/E2E-PROXY-C2: /' /tmp/proxy-c2.log
    sed 's/^/E2E-PROXY-C13: /' /tmp/proxy-c13.log
    sed 's/^/E2E-PROXY-C12: /' /tmp/proxy-c12.log
    sed 's/^/E2E-PROXY-C10: /' /tmp/proxy-c10.log
else
    e2e-guest-client --boot-only
    say "guest client exit status $?"
fi
# Kernel warnings and errors (raw priorities 0 to 4).
dmesg -r | grep '^<[0-4]>' | sed 's/^/E2E-DMESG-WARN: /'
say "done"
poweroff -f
