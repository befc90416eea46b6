#!/bin/sh
# ferry.test=parallel: several requests in flight at once. PARALLEL dd processes write their
# own 1 MiB slice of the pattern at its offset concurrently (O_DIRECT, 256 KiB per request:
# 64 pages, so Linux uses indirect descriptors when the device offers them), then read their
# slices back concurrently and compare; then the page cache is dropped and the whole
# pattern is read back (buffered: readahead keeps several requests in flight) and compared.
# The host checks the disk image (`image-builder check-disk`).
set -e
# shellcheck source=linux/lib.sh
. /ferry/lib.sh
# Written by linux/mkinitramfs: PATTERN_SEED, PATTERN_MIB, PATTERN_FILE.
# shellcheck disable=SC1091
. /ferry/pattern.conf

dev=/dev/vda
[ -b $dev ] || fail "no $dev"
vdev=$(virtio_dev virtio_blk) || fail "no device bound to virtio_blk"
say "$vdev features: $(virtio_features "$vdev")"
PARALLEL=$PATTERN_MIB
[ "$PARALLEL" -ge 4 ] || fail "the pattern has $PATTERN_MIB MiB, need at least 4 slices"

# run_all write|read: one background dd per 1 MiB slice, then wait for each.
run_all() {
    pids=''
    i=0
    while [ $i -lt "$PARALLEL" ]; do
        case $1 in
            write) dd if="$PATTERN_FILE" of=$dev bs=256k count=4 skip=$((i * 4)) seek=$((i * 4)) \
                oflag=direct 2>/tmp/err.$i & ;;
            read) dd if=$dev of=/tmp/slice.$i bs=256k count=4 skip=$((i * 4)) \
                iflag=direct 2>/tmp/err.$i & ;;
        esac
        pids="$pids $!"
        i=$((i + 1))
    done
    i=0
    for pid in $pids; do
        wait "$pid" || fail "$1 of slice $i failed: $(cat /tmp/err.$i)"
        i=$((i + 1))
    done
}

t0=$(now_us)
run_all write
t1=$(now_us)
bench parallel-write $((PARALLEL << 20)) "$t0" "$t1"
say "$PARALLEL writers done"
t0=$(now_us)
run_all read
t1=$(now_us)
bench parallel-read $((PARALLEL << 20)) "$t0" "$t1"
i=0
while [ $i -lt "$PARALLEL" ]; do
    dd if="$PATTERN_FILE" of=/tmp/want bs=256k count=4 skip=$((i * 4)) 2>/dev/null
    cmp /tmp/slice.$i /tmp/want || fail "slice $i read back differs"
    rm -f /tmp/slice.$i
    i=$((i + 1))
done
drop_caches
dd if=$dev bs=1M count="$PATTERN_MIB" 2>/dev/null | cmp - "$PATTERN_FILE" ||
    fail "the pattern read back from $dev differs"
say "stat (reads merged sectors ms writes merged sectors ms ...): $(cat /sys/block/vda/stat)"
say "verified $PATTERN_MIB MiB seed $PATTERN_SEED"
