"""A FUSE file system for tests: serves the files of BACKING at MOUNTPOINT,
sleeping DELAY_MS before each read, write and fsync. A loop device over one
of its files is a disk with that much latency.

Usage: slowfs.py BACKING MOUNTPOINT DELAY_MS
Runs in the foreground until unmounted (or killed). Needs fusepy and libfuse2.
"""

import errno
import os
import sys
import time

from fuse import FUSE, FuseOSError, Operations


class Slow(Operations):
    def __init__(self, backing, delay):
        self.backing = backing
        self.delay = delay

    def _path(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._path(path))
        except FileNotFoundError:
            raise FuseOSError(errno.ENOENT)
        keys = ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid",
                "st_atime", "st_mtime", "st_ctime")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def open(self, path, flags):
        return os.open(self._path(path), flags & ~os.O_DIRECT)

    def read(self, path, size, offset, fh):
        time.sleep(self.delay)
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        time.sleep(self.delay)
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)

    def fsync(self, path, datasync, fh):
        time.sleep(self.delay)
        os.fsync(fh)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)


if __name__ == "__main__":
    backing, mountpoint, delay_ms = sys.argv[1], sys.argv[2], float(sys.argv[3])
    FUSE(Slow(backing, delay_ms / 1000.0), mountpoint, foreground=True,
         nothreads=True, direct_io=True)
