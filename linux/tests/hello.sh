#!/bin/sh
# ferry.test=hello: the smallest test. Shows that the kernel booted, /init ran
# and the command line arrived.
echo "ferry-linux: hello"
echo "ferry-linux: cmdline: $(cat /proc/cmdline)"
