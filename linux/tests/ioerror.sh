#!/bin/sh
# ferry.test=ioerror: I/O that cannot succeed fails cleanly in Linux (an error or end of
# file, not a hang or a panic), and normal I/O still works afterwards:
#  1. I/O at and past the end of /dev/vda (refused by Linux's block layer: it never reaches
#     the device).
#  2. With `ferry.fail=<first sector>+<count>` on the command line: the device fails I/O to
#     those sectors (the blk appliance's `blk.fail=` with the same value: the physical disk
#     "has a bad range", and the appliance answers VIRTIO_BLK_S_IOERR). O_DIRECT reads and
#     writes touching the range, and a buffered read after dropping the page cache, must get
#     `Input/output error`, the kernel must log `I/O error, dev vda, sector <N>`, and the
#     4 KiB on either side must still read and write. Without ferry.fail= (Linux owning the
#     disk) this part is skipped.
# Writes only zeros, and only after blk.sh's pattern (0..4 MiB), so a disk holding "pattern,
# then zeros" keeps it.
set -e
# shellcheck source=linux/lib.sh
. /ferry/lib.sh

dev=/dev/vda
[ -b $dev ] || fail "no $dev"
sectors=$(cat /sys/block/vda/size)
say "$dev: $sectors sectors"

# A write of one sector just past the end: refused.
if dd if=/dev/zero of=$dev bs=512 count=1 seek="$sectors" oflag=direct 2>/tmp/err; then
    fail "a write past the end succeeded"
fi
say "write past the end: refused ($(head -n 1 /tmp/err))"
# A write across the end (the last sector and one more): the part past the end is refused.
if dd if=/dev/zero of=$dev bs=1024 count=1 seek=$(((sectors - 1) * 512)) oflag=seek_bytes,direct \
    2>/tmp/err; then
    fail "a write across the end succeeded"
fi
say "write across the end: refused ($(head -n 1 /tmp/err))"
# A read past the end: end of file (no data), not an error the driver invents.
n=$(dd if=$dev bs=512 count=1 skip="$sectors" iflag=direct 2>/dev/null | wc -c)
[ "$n" -eq 0 ] || fail "a read past the end returned $n bytes"
say "read past the end: end of file"
# Still working: the last 4 KiB, written and read back through the device (4 KiB: see the
# O_DIRECT note in part 2).
dd if=/dev/zero of=$dev bs=4k count=1 seek=$(((sectors - 8) * 512)) oflag=seek_bytes,direct \
    2>/dev/null || fail "writing the last 4 KiB"
n=$(dd if=$dev bs=4k count=1 skip=$(((sectors - 8) * 512)) iflag=skip_bytes,direct 2>/dev/null |
    od -An -v -tx1 | tr -d ' \n' | tr -d 0 | wc -c)
[ "$n" -eq 0 ] || fail "the last 4 KiB do not read back as zeros"
dd if=$dev of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null || fail "reading after the errors"
say "normal I/O after the errors: ok"

# 2. Errors the device reports.
fail_range=$(cmdline_arg ferry.fail) || {
    say "no ferry.fail= on the command line: device errors not checked"
    exit 0
}
case $fail_range in
    [0-9]*+[0-9]*) ;;
    *) fail "ferry.fail=$fail_range is not <first sector>+<count>" ;;
esac
first=${fail_range%%+*}
count=${fail_range#*+}
case $first$count in *[!0-9]*) fail "ferry.fail=$fail_range is not <first sector>+<count>" ;; esac
last=$((first + count - 1))
# 4 KiB of good sectors on either side are read and written below.
if [ "$count" -eq 0 ] || [ "$first" -lt 8 ] || [ $((last + 9)) -gt "$sectors" ]; then
    fail "ferry.fail=$fail_range: want 1 or more sectors with 4 KiB of disk on either side"
fi
say "device errors expected at sectors $first..$((last + 1))"

# O_DIRECT needs a buffer aligned to the logical block size, and busybox dd allocates one
# page-aligned only when bs is at least a page: with a smaller bs the read or write fails
# with EINVAL and dd silently retries it without O_DIRECT (clear_O_DIRECT() in its dd.c), i.e.
# through the page cache. So every O_DIRECT request here is 4 KiB; offsets are in bytes
# (skip_bytes/seek_bytes), so a request can start at any sector.

# expect_eio WHAT DD-ARGS...: dd must fail with EIO (not succeed, not another error).
expect_eio() {
    what=$1
    shift
    if dd "$@" 2>/tmp/err; then
        fail "$what succeeded"
    fi
    grep -q 'Input/output error' /tmp/err || fail "$what: $(head -n 1 /tmp/err)"
    say "$what: I/O error ($(head -n 1 /tmp/err))"
}
# kernel_logged PATTERN: a kernel log line contains PATTERN.
kernel_logged() {
    dmesg | grep -q "$1" || fail "no '$1' in the kernel log"
}
buffer_errors() {
    dmesg | grep -c 'Buffer I/O error' || true
}
buffered_before=$(buffer_errors)
expect_eio "O_DIRECT read of sectors $first..$((first + 8))" \
    if=$dev of=/dev/null bs=4k count=1 skip=$((first * 512)) iflag=skip_bytes,direct
kernel_logged "I/O error, dev vda, sector $first "
expect_eio "O_DIRECT write of sectors $last..$((last + 8))" \
    if=/dev/zero of=$dev bs=4k count=1 seek=$((last * 512)) oflag=seek_bytes,direct
kernel_logged "I/O error, dev vda, sector $last "
# A request that only ends in the range fails as a whole.
expect_eio "O_DIRECT read of sectors $((first - 7))..$((first + 1))" \
    if=$dev of=/dev/null bs=4k count=1 skip=$(((first - 7) * 512)) iflag=skip_bytes,direct
kernel_logged "I/O error, dev vda, sector $((first - 7)) "
# The page cache took no part (it reports its failures as `Buffer I/O error`).
[ "$(buffer_errors)" -eq "$buffered_before" ] ||
    fail "the O_DIRECT requests went through the page cache"
# Through the page cache: nothing cached, so the kernel must ask the device and report it.
drop_caches
expect_eio "buffered read of sector $first" \
    if=$dev of=/dev/null bs=512 count=1 skip="$first"
kernel_logged "Buffer I/O error on dev vda"

# The 4 KiB on either side still work: zeros written and read back, O_DIRECT.
for s in $((first - 8)) $((last + 1)); do
    dd if=/dev/zero of=$dev bs=4k count=1 seek=$((s * 512)) oflag=seek_bytes,direct 2>/tmp/err ||
        fail "writing sectors $s..$((s + 8)) next to the bad range: $(head -n 1 /tmp/err)"
    n=$(dd if=$dev bs=4k count=1 skip=$((s * 512)) iflag=skip_bytes,direct 2>/tmp/err |
        od -An -v -tx1 | tr -d ' \n' | tr -d 0 | wc -c)
    [ "$n" -eq 0 ] || fail "sectors $s..$((s + 8)) next to the bad range do not read back as zeros"
done
dd if=$dev of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null || fail "reading after the device errors"
say "sectors $((first - 8))..$first and $((last + 1))..$((last + 9)) next to the bad range: ok"
say "normal I/O after the device errors: ok"
