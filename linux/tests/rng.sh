#!/bin/sh
# ferry.test=rng: Linux's virtio-rng driver behind /dev/hwrng. The hw_random core must have
# picked the virtio device, and 64 KiB read from it must not be constant: count the distinct
# byte values (256 expected; at least 200 required) and check two 4 KiB reads differ.
set -e
# shellcheck source=linux/lib.sh
. /ferry/lib.sh

current=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null) ||
    fail "no /sys/class/misc/hw_random (no hwrng registered)"
say "rng_current: $current (available: $(cat /sys/class/misc/hw_random/rng_available))"
case $current in
    virtio_rng*) ;;
    *) fail "rng_current is '$current', not the virtio rng" ;;
esac
vdev=$(virtio_dev virtio_rng) || fail "no device bound to virtio_rng"
say "$vdev features: $(virtio_features "$vdev")"

t0=$(now_us)
dd if=/dev/hwrng of=/tmp/rng bs=4096 count=16 iflag=fullblock 2>/dev/null || fail "reading /dev/hwrng"
t1=$(now_us)
bytes=$(wc -c </tmp/rng)
[ "$bytes" -eq 65536 ] || fail "read $bytes bytes from /dev/hwrng, wanted 65536"
distinct=$(od -An -v -tu1 /tmp/rng | tr -s ' ' '\n' | sed '/^$/d' | sort -u | wc -l)
dd if=/tmp/rng of=/tmp/rng.a bs=4096 count=1 2>/dev/null
dd if=/tmp/rng of=/tmp/rng.b bs=4096 count=1 skip=1 2>/dev/null
if cmp -s /tmp/rng.a /tmp/rng.b; then
    fail "two 4 KiB reads are equal"
fi
say "$bytes bytes, $distinct distinct byte values"
bench rng-read "$bytes" "$t0" "$t1"
[ "$distinct" -ge 200 ] || fail "only $distinct distinct byte values in $bytes bytes"
