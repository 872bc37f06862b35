#!/bin/busybox sh
# chainbench kernel matrix: PID 1 of the guest (copied into the initramfs as /init by runner.py).
#
# Stage 1 (in the initramfs): load the few modules the boot needs (virtio,
# 9p, overlay: runner.py put them under /modules in load order), mount the
# host's root read-only over 9p, lay a tmpfs over it with overlayfs so the
# guest can write anywhere without touching the host, make the extracted
# kernel's modules visible as /lib/modules/$(uname -r), then switch_root.
#
# Stage 2 (in the new root, still PID 1): mount proc/sys/dev/bpffs/cgroup2/
# debugfs/tracefs and fresh tmpfs on /run and /tmp, mount the writable 9p
# share where results go, run guest.py under a timeout, power off.
#
# /cbkm.conf (written by runner.py) sets CBKM_REPO, CBKM_PYTHON, CBKM_MODULES,
# CBKM_TIMEOUT; guest.py reads the rest from config.json in the results share.  The guest has no network device: qemu
# runs with -nodefaults and no -nic, so the host's networking is never involved.

BB=/bin/busybox
[ -x "$BB" ] || BB=/.cbkm/busybox

say() { echo "cbkm-init: $*"; }

die() {
    say "FATAL: $*"
    echo "@@CBKM-FATAL@@ $*"
    $BB sync
    $BB poweroff -f
    echo o > /proc/sysrq-trigger
    $BB sleep 5
    exit 1
}

ninep_opts="trans=virtio,version=9p2000.L,msize=262144"

if [ "$1" != stage2 ]; then
    $BB mkdir -p /proc /sys /dev /lower /upper /newroot
    $BB mount -t proc proc /proc
    $BB mount -t sysfs sysfs /sys
    $BB mount -t devtmpfs devtmpfs /dev
    . /cbkm.conf
    say "stage 1 on $($BB uname -r)"
    if [ -f /modules/order ]; then
        for m in $($BB cat /modules/order); do
            $BB insmod "/modules/$m" 2>/dev/null || say "insmod $m failed (built in or optional?)"
        done
    fi
    $BB mount -t 9p -o "ro,$ninep_opts,cache=loose" cbkmroot /lower \
        || die "cannot mount the host root over 9p (modules missing?)"
    $BB mount -t tmpfs -o mode=0755 tmpfs /upper || die "tmpfs"
    $BB mkdir -p /upper/data /upper/work
    $BB mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot \
        || die "cannot mount overlayfs over the 9p root"
    $BB mkdir -p /newroot/.cbkm
    $BB cp /bin/busybox /init /cbkm.conf /newroot/.cbkm/ || die "cannot populate /.cbkm"
    rel=$($BB uname -r)
    # Both spellings: /lib is a symlink to usr/lib on merged-/usr hosts, a directory otherwise.
    for d in /newroot/usr/lib/modules /newroot/lib/modules; do
        $BB mkdir -p "$d"
        $BB rm -rf "$d/$rel"
        $BB ln -s "$CBKM_MODULES" "$d/$rel"
    done
    for d in proc sys dev; do
        $BB mkdir -p "/newroot/$d"
        $BB mount --move "/$d" "/newroot/$d" || die "cannot move /$d"
    done
    exec $BB switch_root /newroot /.cbkm/busybox sh /.cbkm/init stage2
    die "switch_root failed"
fi

# ---- stage 2: PID 1 in the overlay root ----
BB=/.cbkm/busybox
. /.cbkm/cbkm.conf
$BB mount -t tmpfs -o mode=0755 tmpfs /run
$BB mount -t tmpfs -o mode=1777 tmpfs /tmp
$BB mkdir -p /dev/pts /dev/shm
$BB mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts /dev/pts
$BB mount -t tmpfs -o mode=1777 tmpfs /dev/shm
[ -e /dev/fd ] || $BB ln -s /proc/self/fd /dev/fd
$BB mount -t bpf -o mode=0700 bpffs /sys/fs/bpf || say "bpffs mount failed"
$BB mount -t cgroup2 cgroup2 /sys/fs/cgroup || say "cgroup2 mount failed"
$BB mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
$BB mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
$BB mkdir -p /run/cbkm-out /run/netns /var/run
$BB mount -t 9p -o "$ninep_opts" cbkmout /run/cbkm-out || die "cannot mount the results share"
[ -x /sbin/modprobe ] || [ -x /usr/sbin/modprobe ] || say "no modprobe on the host: module autoload is off"
$BB ip link set lo up 2>/dev/null
$BB hostname cbkm-guest
echo "cbkm-init: stage 2 ready, running guest.py (timeout ${CBKM_TIMEOUT}s)"
cd "$CBKM_REPO" || die "no $CBKM_REPO"
$BB env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    $BB timeout "$CBKM_TIMEOUT" "$CBKM_PYTHON" -m ci.kernel_matrix.guest --out /run/cbkm-out
rc=$?
echo "@@CBKM-EXIT@@ $rc"
$BB sync
$BB umount /run/cbkm-out 2>/dev/null
$BB poweroff -f
echo o > /proc/sysrq-trigger
$BB sleep 10
