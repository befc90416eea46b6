#!/bin/sh
# ferry.test=ioerror: I/O at and past the end of /dev/vda fails cleanly (an error or end of
# file, not a hang or a panic), and normal I/O still works afterwards. Writes only zeros,
# so a disk holding "pattern, then zeros" keeps it.
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
# Still working: the last sector, written and read back through the device.
dd if=/dev/zero of=$dev bs=512 count=1 seek=$((sectors - 1)) oflag=direct 2>/dev/null ||
    fail "writing the last sector"
n=$(dd if=$dev bs=512 count=1 skip=$((sectors - 1)) iflag=direct 2>/dev/null | od -An -v -tx1 | tr -d ' \n' | tr -d 0 | wc -c)
[ "$n" -eq 0 ] || fail "the last sector does not read back as zeros"
dd if=$dev of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null || fail "reading after the errors"
say "normal I/O after the errors: ok"
