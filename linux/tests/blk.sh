#!/bin/sh
# ferry.test=blk: Linux's own virtio-blk driver on /dev/vda.
#  1. Writes the seeded pattern (/ferry/pattern.bin: ferry_drivers::pattern, PATTERN_MIB MiB,
#     PATTERN_SEED) to the start of the disk, syncs, drops the page cache, reads it back
#     from the device and compares. The host checks the disk image afterwards
#     (`image-builder check-disk IMAGE --seed PATTERN_SEED --mib PATTERN_MIB`).
#  2. Throughput passes with O_DIRECT in the region BENCH_OFFSET_MIB.. (after the pattern;
#     they write zeros, so the disk stays "pattern, then zeros"), one
#     `ferry: bench: linux-<pass> bytes=<B> usecs=<U> [requests=<N>]` line each.
set -e
# shellcheck source=linux/lib.sh
. /ferry/lib.sh
# Written by linux/mkinitramfs: PATTERN_SEED, PATTERN_MIB, PATTERN_FILE.
# shellcheck disable=SC1091
. /ferry/pattern.conf

BENCH_OFFSET_MIB=8
SEQ_MIB=8
RAND_OPS=64

dev=/dev/vda
[ -b $dev ] || fail "no $dev (is there a virtio,mmio node with a blk device?)"
vdev=$(virtio_dev virtio_blk) || fail "no device bound to virtio_blk"
sectors=$(cat /sys/block/vda/size)
say "$dev: $sectors sectors"
say "$vdev features: $(virtio_features "$vdev")"
say "queue: max_segments $(cat /sys/block/vda/queue/max_segments) max_sectors_kb $(cat /sys/block/vda/queue/max_sectors_kb)"
[ "$sectors" -ge $(((BENCH_OFFSET_MIB + SEQ_MIB) * 2048)) ] || fail "disk too small: $sectors sectors"

# 1. Pattern through the page cache, back from the device.
dd if="$PATTERN_FILE" of=$dev bs=1M count="$PATTERN_MIB" 2>/dev/null || fail "writing the pattern"
drop_caches
dd if=$dev bs=1M count="$PATTERN_MIB" 2>/dev/null | cmp - "$PATTERN_FILE" ||
    fail "the pattern read back from $dev differs"
say "verified $PATTERN_MIB MiB seed $PATTERN_SEED"

# 2. Throughput (O_DIRECT: every dd block is a request to the device, no page cache).
bytes=$((SEQ_MIB << 20))
t0=$(now_us)
dd if=/dev/zero of=$dev bs=1M count=$SEQ_MIB seek=$BENCH_OFFSET_MIB oflag=direct 2>/dev/null
t1=$(now_us)
bench seq-write $bytes "$t0" "$t1"
t0=$(now_us)
dd if=$dev of=/dev/null bs=1M count=$SEQ_MIB skip=$BENCH_OFFSET_MIB iflag=direct 2>/dev/null
t1=$(now_us)
bench seq-read $bytes "$t0" "$t1"

# Random 4 KiB: one dd per request at pseudo-random 4 KiB blocks of the bench region (the
# same sequence every run). Each dd is a fork + exec: the dd-4k pass does the same with no
# device (/dev/zero -> /dev/null), so image-builder bench can subtract that cost.
first=$((BENCH_OFFSET_MIB * 256))
span=$((SEQ_MIB * 256))
rand_pass() { # rand_pass write|read|none
    x=12345 i=0
    while [ $i -lt $RAND_OPS ]; do
        x=$(((x * 1103515245 + 12345) % 2147483648))
        block=$((first + x % span))
        case $1 in
            write) dd if=/dev/zero of=$dev bs=4k count=1 seek=$block oflag=direct 2>/dev/null ;;
            read) dd if=$dev of=/dev/null bs=4k count=1 skip=$block iflag=direct 2>/dev/null ;;
            none) dd if=/dev/zero of=/dev/null bs=4k count=1 2>/dev/null ;;
        esac
        i=$((i + 1))
    done
}
bytes=$((RAND_OPS * 4096))
for pass in write read none; do
    t0=$(now_us)
    rand_pass $pass
    t1=$(now_us)
    case $pass in
        none) bench dd-4k $bytes "$t0" "$t1" $RAND_OPS ;;
        *) bench rand-$pass-4k $bytes "$t0" "$t1" $RAND_OPS ;;
    esac
done
say "bench region ${BENCH_OFFSET_MIB}M+${SEQ_MIB}M: zeros written and read"
