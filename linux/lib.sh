# shellcheck shell=sh
# /ferry/lib.sh: functions for linux/tests/*.sh (`. /ferry/lib.sh`). busybox sh.

# fail MESSAGE...: print `ferry-linux: <test>: FAIL: MESSAGE` and exit 1.
# $FERRY_TEST is the test's name (set by /init).
fail() {
    echo "ferry-linux: ${FERRY_TEST:-test}: FAIL: $*"
    exit 1
}

# say MESSAGE...: a progress line of the current test.
say() {
    echo "ferry-linux: ${FERRY_TEST:-test}: $*"
}

# now_us: the kernel's printk clock (local_clock, the arch timer) in microseconds. busybox's
# date has no %N and its dd prints no time, and /proc/uptime counts in 10 ms steps; so this
# writes a marker to /dev/kmsg at debug level (kept out of the console) and reads its
# timestamp back from the kernel log. The clock is the guest's, so under QEMU -icount the
# figures are guest virtual time.
now_us() {
    FERRY_MARK=$((${FERRY_MARK:-0} + 1))
    marker="ferry-mark $$.$FERRY_MARK"
    # Called as $(now_us), FERRY_MARK does not survive the subshell: markers repeat, and the
    # last one in the log is this call's.
    echo "<7>$marker" >/dev/kmsg
    dmesg | awk -v m="$marker" '
        index($0, m) { t = $0 }
        END {
            if (t == "") exit 1
            sub(/^\[ */, "", t); sub(/\].*/, "", t)
            split(t, part, ".")
            printf "%d\n", part[1] * 1000000 + part[2]
        }'
}

# bench NAME BYTES START_US END_US [REQUESTS]: the bench line image-builder reads.
bench() {
    echo "ferry: bench: linux-$1 bytes=$2 usecs=$(($4 - $3))${5:+ requests=$5}"
}

# drop_caches: write back and forget the page cache, so the next read goes to the device.
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# virtio_features DEV: the interesting feature bits the driver accepted for a virtio device
# (sysfs `features`: one character per bit, bit 0 first).
virtio_features() {
    f=$(cat "/sys/bus/virtio/devices/$1/features")
    out=
    for pair in 28:INDIRECT_DESC 29:EVENT_IDX 32:VERSION_1 33:ACCESS_PLATFORM 34:RING_PACKED \
        9:FLUSH 2:SEG_MAX 1:SIZE_MAX 12:MQ; do
        bit=${pair%%:*}
        [ "$(echo "$f" | cut -c$((bit + 1)))" = 1 ] && out="$out ${pair#*:}"
    done
    echo "${out# }"
}

# virtio_dev DRIVER: the first virtio device bound to DRIVER (virtio_blk, virtio_rng).
virtio_dev() {
    for d in /sys/bus/virtio/drivers/"$1"/virtio*; do
        [ -e "$d" ] && { basename "$d"; return 0; }
    done
    return 1
}

# cmdline_arg KEY: the value of KEY=value on the kernel command line (the last one wins);
# returns 1 when it is not there. Dotted parameters (ferry.*) only reach /init this way.
cmdline_arg() {
    read -r _cmdline </proc/cmdline
    _found=1
    set -f
    for _arg in $_cmdline; do
        case $_arg in
            "$1"=*) _value=${_arg#"$1"=} _found=0 ;;
        esac
    done
    set +f
    [ $_found -eq 0 ] && echo "$_value"
}
