#!/usr/bin/env python3
"""A disk whose zones are slow on purpose, for the zone placement tests.

Mounts a FUSE file system at MOUNT holding one file, `disk.img`, of SIZE
bytes, backed by a sparse file in BACKING. Reads of bytes inside the slow
ranges are held back so they go no faster than --slow-rate bytes per
second; everything else reads at the speed of the backing file. Writes and
fsync go straight through. direct_io: the kernel caches nothing, so every
read of the image (or of a loop device over it) comes here.

    slowdisk.py BACKING_DIR MOUNT --size 512MiB --slow 0:40MiB --slow 348MiB:512MiB

Runs in the foreground until unmounted (umount MOUNT) or killed.
"""
import argparse
import errno
import os
import sys
import time

from fuse import FUSE, FuseOSError, Operations  # fusepy

UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def size(s):
    for u in sorted(UNITS, key=len, reverse=True):
        if u and s.endswith(u):
            return int(float(s[: -len(u)]) * UNITS[u])
    return int(s)


def span(s):
    a, b = s.split(":")
    return size(a), size(b)


class SlowDisk(Operations):
    def __init__(self, backing, slow, rate):
        self.backing = backing
        self.slow = slow
        self.rate = rate

    def _path(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._path(path))
        except FileNotFoundError:
            raise FuseOSError(errno.ENOENT)
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def open(self, path, flags):
        return os.open(self._path(path), flags & ~(os.O_DIRECT | os.O_CREAT | os.O_EXCL))

    def read(self, path, length, offset, fh):
        slow = sum(max(0, min(offset + length, b) - max(offset, a)) for a, b in self.slow)
        if slow:
            time.sleep(slow / self.rate)
        return os.pread(fh, length, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)

    def fsync(self, path, datasync, fh):
        os.fsync(fh)
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("backing")
    ap.add_argument("mount")
    ap.add_argument("--size", type=size, required=True)
    ap.add_argument("--slow", type=span, action="append", default=[], help="START:END byte range, e.g. 0:40MiB")
    ap.add_argument("--slow-rate", type=size, default=16 << 20, help="bytes per second in slow ranges")
    a = ap.parse_args()
    os.makedirs(a.backing, exist_ok=True)
    img = os.path.join(a.backing, "disk.img")
    with open(img, "ab") as f:
        f.truncate(a.size)
    print("slowdisk: serving", os.path.join(a.mount, "disk.img"), flush=True)
    FUSE(SlowDisk(a.backing, a.slow, a.slow_rate), a.mount, foreground=True, direct_io=True, nothreads=False)


if __name__ == "__main__":
    sys.exit(main())
