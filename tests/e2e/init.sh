#!/bin/busybox sh
# /init of the end-to-end test's initramfs (see run.sh). Loads the virtio-gpu module chain, waits
# for the render node, starts one cross-domain-proxy per channel, runs the guest client, and
# powers off. Lines starting with E2E- are read by run.sh on the serial console.

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
    cross-domain-proxy --channel 0x12 --listen /run/c12.sock >/tmp/proxy-c12.log 2>&1 &
    i=0
    while { [ ! -S /run/c2.sock ] || [ ! -S /run/c12.sock ]; } && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    # The host enforces its own deadline; this one only makes sure the logs below get printed.
    timeout 240 e2e-guest-client --c2 /run/c2.sock --c12 /run/c12.sock
    say "guest client exit status $?"
    sed 's/^/E2E-PROXY-C2: /' /tmp/proxy-c2.log
    sed 's/^/E2E-PROXY-C12: /' /tmp/proxy-c12.log
else
    e2e-guest-client --boot-only
    say "guest client exit status $?"
fi
# Kernel warnings and errors (raw priorities 0 to 4).
dmesg -r | grep '^<[0-4]>' | sed 's/^/E2E-DMESG-WARN: /'
say "done"
poweroff -f
